"""Device time of OPT-6.7B's nets on a BM1684X as tpu-mlir's compiler predicts it, beside the roofline.

    python bench/tpu_device_time.py [--window 512] [--chunk 64] [--modes int8 int4]

No box is needed: tpuc-opt's codegen pass simulates the instruction streams it emits
with its own cost model and writes ``compiler_profile_<subnet>.txt`` beside the graph:
each BD (compute) and GDMA (memory) command with its start and end cycle, then the
net's total cycles, the bytes each GDMA direction moves, the DDR bandwidth use, and
``runtime: <ms>`` (the cycles at the TPU's 1 GHz). Sophgo's developers put this
estimate within 20% of the chip (sophgo/tpu-mlir issue #7); it is a prediction, not a
measurement. The cmodel simulator, by contrast, runs the instructions for their
results and prints no time.

This bench builds one decoder layer of OPT-6.7B's width (hidden 4096, 32 heads, FFN
16384; random weights, since time does not depend on values) as the converter does,
for a decode step over a window of cached positions and for a prefill chunk over the
whole context, and the lm_head, compiles each at int8 and int4 (W8F16 / W4F16, in
``convert``'s default groups: 128), and prints the compiler's time beside the roofline (weights and the K/V read at
68 GB/s, the matmuls at 16 TFLOPS), then what it implies for a whole token: 32 layers
plus the lm_head. Six compiles of about a minute each on an idle core (15 minutes on a
shared 2-core machine), up to 4 GB of memory; needs the tpu-mlir download.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from tpu_host_overhead import BANDWIDTH, FLOPS, VOCAB, block_params, weight_bytes

from opt_tpu_tui import toolchain
from opt_tpu_tui.convert import graphs
from opt_tpu_tui.convert.mlir import Graph
from opt_tpu_tui.converted import DEFAULT_GROUP_SIZE, MODES, quantization
from opt_tpu_tui.model.checkpoint import OPTWeights
from opt_tpu_tui.model.config import OPTConfig
from opt_tpu_tui.model.forward import PreparedLayer

HIDDEN, HEADS, FFN, LAYERS = 4096, 32, 16384, 32  # OPT-6.7B
GROUP = DEFAULT_GROUP_SIZE


def config() -> OPTConfig:
    return OPTConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=1, num_attention_heads=HEADS,
                     ffn_dim=FFN, max_position_embeddings=2048, word_embed_proj_dim=HIDDEN)  # fmt: skip


def random_layer(rng: np.random.Generator) -> PreparedLayer:
    def matrix(rows: int, cols: int) -> np.ndarray:
        return rng.standard_normal((rows, cols), np.float32) * 0.02

    def vector(n: int) -> np.ndarray:
        return rng.standard_normal(n, np.float32) * 0.02

    h, f, ones = HIDDEN, FFN, np.ones(HIDDEN, np.float32)
    return PreparedLayer(
        qkv_w=matrix(3 * h, h), qkv_b=vector(3 * h), o_w=matrix(h, h), o_b=vector(h), ln1_w=ones, ln1_b=vector(h),
        fc1_w=matrix(f, h), fc1_b=vector(f), fc2_w=matrix(h, f), fc2_b=vector(h), ln2_w=ones, ln2_b=vector(h),
    )  # fmt: skip


def random_head(rng: np.random.Generator) -> OPTWeights:
    """Only what ``graphs.lm_head`` reads: the final LayerNorm and the head matrix."""
    empty = np.empty((0, HIDDEN), np.float32)
    head = rng.standard_normal((VOCAB, HIDDEN), np.float32) * 0.02
    return OPTWeights(config(), empty, empty, [], head, final_ln_w=np.ones(HIDDEN, np.float32),
                      final_ln_b=np.zeros(HIDDEN, np.float32))  # fmt: skip


def predicted(folder: Path) -> tuple[float, int]:
    """(ms, bytes read from DDR) summed over the compiler's profiles of the net compiled in ``folder``."""
    ms, read = 0.0, 0
    profiles = sorted(folder.glob("compiler_profile_*.txt"))
    if not profiles:
        raise RuntimeError(f"{folder}: tpuc-opt wrote no compiler_profile_*.txt")
    for path in profiles:
        text = path.read_text()
        found = re.search(r"runtime: ([\d.]+)ms", text)
        loads = re.search(r"S2L:(\d+)", text)
        if found is None or loads is None:
            raise RuntimeError(f"{path}: no 'runtime:' or 'S2L:' figure (another tpu-mlir version?)")
        ms += float(found.group(1))
        read += int(loads.group(1))
    return ms, read


def roofline_ms(mode: str, rows: int, cache: int, head: bool) -> float:
    """The larger of the reads at BANDWIDTH (weights, and the K/V cache a layer attends over) and
    the matmuls at FLOPS."""
    if head:
        params, kv, attention = VOCAB * HIDDEN, 0, 0
    else:
        params, kv = block_params(HIDDEN, 1, FFN), 2 * cache * HIDDEN * 2
        attention = 4 * rows * (cache + rows) * HIDDEN
    reads = weight_bytes(params, mode, GROUP) + kv
    return max(reads / BANDWIDTH, (2 * params * rows + attention) / FLOPS) * 1e3


def compile_one(scratch: Path, name: str, build: Callable[[], tuple[Graph, list[str]]], mode: str) -> tuple[float, int]:
    """Build, write and compile one net; the graph (800 MB of float32 weights for a layer) is let go before tpuc-opt runs."""
    folder = scratch / name
    graph, outputs = build()
    path = graph.write(folder, outputs)
    del graph
    start = time.perf_counter()
    toolchain.compile_top(path, quantization(mode, "f16"), GROUP)
    print(f"compiled {name} in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return predicted(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--window", type=int, default=512, help="cached positions a decode step attends over")
    parser.add_argument("--context", type=int, default=512, help="the cache a prefill chunk attends over")
    parser.add_argument("--chunk", type=int, default=64)
    parser.add_argument("--modes", nargs="+", default=["int8", "int4"], choices=[m for m in MODES if m != "f16"])
    args = parser.parse_args()
    toolchain.fetch()
    rng = np.random.default_rng(0)
    cases = [("decode", 1, args.window), (f"prefill chunk of {args.chunk}", args.chunk, args.context)]
    rows_out: list[tuple[str, str, float, int, float]] = []
    per_token: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-device-") as folder:
        scratch = Path(folder)
        for mode in args.modes:
            for label, rows, cache in cases:
                name = f"layer_{mode}_{rows}"
                build = lambda: graphs.block(name, random_layer(rng), config(), cache, rows)  # noqa: E731, B023
                ms, read = compile_one(scratch, name, build, mode)
                rows_out.append((f"layer, {label} over {cache}", mode, ms, read, roofline_ms(mode, rows, cache, False)))
                if rows == 1:
                    per_token[mode] = LAYERS * ms
            ms, read = compile_one(scratch, f"head_{mode}", lambda: graphs.lm_head(f"head_{mode}", random_head(rng)), mode)  # noqa: B023
            rows_out.append(("lm_head, one position", mode, ms, read, roofline_ms(mode, 1, 0, True)))
            per_token[mode] += ms

    print(f"\nOPT-6.7B-wide nets on the BM1684X: tpu-mlir {toolchain.VERSION}'s predicted device time against the roofline")
    print("(68 GB/s, 16 TFLOPS float16); 'read' is the bytes the compiler's GDMA loads from DDR")
    print("| net | weights | predicted | read | roofline | predicted / roofline |")
    print("|---|---|---|---|---|---|")
    for name, mode, ms, read, roof in rows_out:
        print(f"| {name} | {mode} | {ms:.2f} ms | {read / 1e6:.0f} MB | {roof:.2f} ms | {ms / roof:.2f} |")
    print(f"\nA decoded token at window {args.window}: {LAYERS} decode layers and the lm_head")
    print("| weights | predicted per token | predicted tok/s |")
    print("|---|---|---|")
    for mode, ms in per_token.items():
        print(f"| {mode} | {ms:.0f} ms | {1e3 / ms:.1f} |")


if __name__ == "__main__":
    main()
