"""Time to the first token of each chat turn: keeping the cached start of the prompt, or running it all.

    python bench/chat_turns.py [--turns 6] [--message 24] [--reply 48] [--runs 3]

A chat's prompt is the whole conversation so far plus the new message. The CPU backend
keeps the K/V of the start its cache already holds (the previous prompt and the reply
it decoded) and runs only the new tokens; the reference, in the same run, is the numpy
model running the whole prompt again, as before. OPT-125m-shaped random fp32 weights,
random token ids; medians of ``--runs``. Needs the [dev] extra (transformers, to write
the checkpoint).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from decode_cpu import OPT_125M, median_time  # noqa: E402

from opt_tpu_tui.backends.cpu import CPUBackend  # noqa: E402
from opt_tpu_tui.model import load_weights  # noqa: E402
from opt_tpu_tui.model.forward import OPTModel  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=6)
    parser.add_argument("--message", type=int, default=24, help="tokens of each new user message")
    parser.add_argument("--reply", type=int, default=48, help="tokens of each reply")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    import transformers

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="bench-chat-turns-") as scratch:
        model_dir = Path(scratch) / "opt-125m-random"
        transformers.OPTForCausalLM(transformers.OPTConfig(**OPT_125M)).save_pretrained(model_dir)
        backend = CPUBackend(model_dir)
        reference = OPTModel(load_weights(model_dir))

    rows, history = [], [2]
    for turn in range(1, args.turns + 1):
        prompt = history + rng.integers(4, 50265, size=args.message).tolist()
        kept = median_time(lambda: backend.prefill(prompt), args.runs, setup=lambda: backend.prefill(history)) * 1e3
        cached = backend.reused
        whole = median_time(lambda: reference.prefill(prompt), args.runs) * 1e3
        rows.append((turn, len(prompt), cached, kept, whole))
        token = int(np.argmax(backend.prefill(prompt)))
        for _ in range(args.reply):  # the reply, decoded into the cache as in a chat
            token = int(np.argmax(backend.decode(token)))
        history = backend.ids.copy()

    print(f"OPT-125m shape, random fp32 weights, {os.cpu_count()} cores; each turn adds a {args.message}-token "
          f"message to the conversation and gets a {args.reply}-token reply; medians of {args.runs} runs")  # fmt: skip
    print("| turn | prompt tokens | kept from the cache | first token, keeping them | whole prompt again | speed-up |")
    print("|---|---|---|---|---|---|")
    for turn, n, cached, kept, whole in rows:
        print(f"| {turn} | {n} | {cached} | {kept:.1f} ms | {whole:.1f} ms | {whole / kept:.1f}x |")


if __name__ == "__main__":
    main()
