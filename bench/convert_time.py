"""How long `opt-tpu-tui convert` takes for a big OPT, from one layer of its shape.

    python bench/convert_time.py [--model OPT-6.7b] [--mode int4] [--context 512] [--chunk 64]

Writes and compiles one layer's graphs (the prefill chunk and each decode window) with
random weights of the model's shape, as `convert` would, and scales the times to the
whole model on this machine's cores (graphs compile one per core at once). The same run
prints the estimate with a single decode window (the whole context), the reference for
what the smaller windows cost in conversion time. Loading the checkpoint, the lm_head
and combining the bmodels come on top. Needs the tpu-mlir download.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tpu_host_overhead import OPT_SIZES  # noqa: E402

from opt_tpu_tui import toolchain  # noqa: E402
from opt_tpu_tui.convert import graphs  # noqa: E402
from opt_tpu_tui.converted import decode_windows, quantization  # noqa: E402
from opt_tpu_tui.model.config import OPTConfig  # noqa: E402
from opt_tpu_tui.model.forward import PreparedLayer  # noqa: E402


def random_layer(hidden: int, ffn: int) -> PreparedLayer:
    rng = np.random.default_rng(0)

    def w(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape, dtype=np.float32) * 0.02

    ones = np.ones(hidden, np.float32)
    return PreparedLayer(
        qkv_w=w(3 * hidden, hidden), qkv_b=w(3 * hidden), o_w=w(hidden, hidden), o_b=w(hidden),
        ln1_w=ones, ln1_b=w(hidden), fc1_w=w(ffn, hidden), fc1_b=w(ffn), fc2_w=w(hidden, ffn), fc2_b=w(hidden),
        ln2_w=ones, ln2_b=w(hidden),
    )  # fmt: skip


def layer_arguments(doc: str) -> argparse.Namespace:
    """The model, mode, context and chunk of the one layer a bench compiles."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=OPT_SIZES, default="OPT-6.7b")
    parser.add_argument("--mode", choices=("f16", "int8", "int4"), default="int4")
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--chunk", type=int, default=64)
    return parser.parse_args()


class LayerGraphs:
    """One layer of ``args.model``'s shape with random weights, and the graphs ``convert`` makes of it.

    ``shapes``: (label, cache slots, new tokens) of the prefill chunk and each decode window.
    """

    def __init__(self, args: argparse.Namespace) -> None:
        hidden, self.layers, ffn = OPT_SIZES[args.model]
        self.config = OPTConfig.from_dict(dict(
            vocab_size=50272, hidden_size=hidden, num_hidden_layers=self.layers,
            num_attention_heads=12 if hidden == 768 else 32, ffn_dim=ffn, max_position_embeddings=2048,
            word_embed_proj_dim=hidden,
        ))  # fmt: skip
        self.layer = random_layer(hidden, ffn)
        self.precision, self.group = quantization(args.mode, "f16"), 0 if args.mode == "f16" else 64
        self.windows = decode_windows(args.context)
        self.shapes = [("prefill chunk", args.context, args.chunk)] + [
            (f"decode, window {w}", w, 1) for w in self.windows
        ]

    def write(self, index: int, folder: Path) -> Path:
        """Write graph ``index`` of ``shapes`` into ``folder`` as Top MLIR (with its weights); the .mlir's path."""
        _, cache, new = self.shapes[index]
        graph, outputs = graphs.block(f"block_{index}", self.layer, self.config, cache, new)
        return graph.write(folder / f"block_{index}", outputs)


def main() -> None:
    args = layer_arguments(__doc__)
    layer = LayerGraphs(args)
    layers, windows, shapes = layer.layers, layer.windows, layer.shapes
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-convert-") as scratch:
        toolchain.fetch()
        for i, (label, _, _) in enumerate(shapes):
            start = time.perf_counter()
            mlir = layer.write(i, Path(scratch))
            written = time.perf_counter()
            toolchain.compile_top(mlir, layer.precision, layer.group)
            rows.append((label, written - start, time.perf_counter() - written))

    cores = os.cpu_count() or 1
    per_graph = {label: write + compile for label, write, compile in rows}
    with_windows = layers * sum(per_graph.values()) / cores
    single = layers * (per_graph["prefill chunk"] + per_graph[f"decode, window {args.context}"]) / cores
    print(f"\n{args.model} {args.mode}, context {args.context}, chunk {args.chunk}: one layer's graphs, {cores} cores")
    print("| graph | write MLIR + weights | tpuc-opt | per layer |")
    print("|---|---|---|---|")
    for label, write, compile in rows:
        print(f"| {label} | {write:.1f} s | {compile:.1f} s | {write + compile:.1f} s |")
    print(f"\n| all {layers} layers | decode windows {windows} | one decode window ({args.context}) |")
    print("|---|---|---|")
    print(f"| estimated | {with_windows / 60:.1f} min | {single / 60:.1f} min |")


if __name__ == "__main__":
    main()
