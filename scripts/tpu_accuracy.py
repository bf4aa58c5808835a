"""How close each TPU precision stays to float32 numpy on a real OPT, in the BM1684X simulator.

    python scripts/tpu_accuracy.py [--model opt_tpu_tui/demo_model] [--context 64] [--texts 1]

Converts the model at every weight precision with float16 and with bfloat16
activations, then feeds the same held-out transcripts token by token through the
bmrt backend (simulator) and through the numpy backend, and prints per conversion:
the largest logit error relative to the logits' scale, how often the top token agrees,
and the perplexity of each. This is the measurement behind the default ``--activations``.
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

import numpy as np
from perplexity import log_softmax_at, read_heldout, sequences

from opt_tpu_tui.backends import open_backend
from opt_tpu_tui.backends.base import Backend
from opt_tpu_tui.convert.build import convert
from opt_tpu_tui.converted import DEFAULT_GROUP_SIZE
from opt_tpu_tui.demo import DEMO_MODEL_DIR
from opt_tpu_tui.tokenizer import Tokenizer

HERE = Path(__file__).resolve().parent


def teacher_forced(backend: Backend, ids: list[int]) -> list[np.ndarray]:
    """The logits after each prefix of ``ids`` (prefill of the first token, then decode)."""
    out = [backend.prefill(ids[:1]).copy()]
    for token in ids[1:-1]:
        out.append(backend.decode(token).copy())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEMO_MODEL_DIR)
    parser.add_argument("--data", type=Path, default=HERE / "demo_heldout.txt")
    parser.add_argument("--context", type=int, default=64)
    parser.add_argument("--texts", type=int, default=1, help="held-out transcripts to score")
    parser.add_argument("--group-size", type=int, nargs="+", default=[DEFAULT_GROUP_SIZE],
                        help="int8/int4 quantisation groups, a row each")
    parser.add_argument("--modes", nargs="+", default=["f16", "int8", "int4"], choices=["f16", "int8", "int4"])
    parser.add_argument("--activations", nargs="+", default=["f16", "bf16"], choices=["f16", "bf16"])
    args = parser.parse_args()

    texts = sequences(Tokenizer.from_dir(args.model), read_heldout(args.data)[: args.texts], args.context)
    cpu = open_backend(args.model, "cpu", args.context)
    reference = [teacher_forced(cpu, ids) for ids in texts]

    def nll(logits: list[list[np.ndarray]]) -> float:
        scores = [-log_softmax_at(row, ids[k + 1]) for ids, rows in zip(texts, logits) for k, row in enumerate(rows)]
        return math.exp(sum(scores) / len(scores))

    rows = []  # printed at the end, after the simulator's own chatter on stdout
    with tempfile.TemporaryDirectory() as scratch:
        for mode, group in [(m, g) for m in args.modes for g in (args.group_size if m != "f16" else [0])]:
            for activations in args.activations:
                out = convert(args.model, Path(scratch) / f"{mode}-{group}-{activations}", mode, group, args.context,
                              activations, log=lambda _: None)  # fmt: skip
                backend = open_backend(out, "bmrt")
                got = [teacher_forced(backend, ids) for ids in texts]
                backend.close()
                pairs = [(g, r) for gs, rs in zip(got, reference) for g, r in zip(gs, rs)]
                error = max(np.abs(g - r).max() / np.abs(r).max() for g, r in pairs)
                agree = np.mean([np.argmax(g) == np.argmax(r) for g, r in pairs])
                name = f"{mode}/{activations}" + (f", g{group}" if group else "")
                rows.append(f"| {name:<16} | {error:.4f} | {agree:.1%} | {nll(got):.2f} |")
    print(f"\n{sum(len(t) - 1 for t in texts)} predicted tokens, context {args.context}; numpy perplexity {nll(reference):.2f}")
    print(f"| {'precision':<16} | max logit error / scale | top-1 agrees | perplexity |")
    print("|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
