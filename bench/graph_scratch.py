"""Device memory for activations: each graph's scratch for a big OPT, from one layer of its shape.

    python bench/graph_scratch.py [--model OPT-6.7b] [--mode int4] [--context 512] [--chunk 64]

bmrt loads every net of a bmodel with its own activation scratch (its ``ctx_size``)
unless the runtime's shared-memory flag, ``BM_RUNTIME_SHARE_MEM``, is set before loading;
then they share one of the largest net's size, the ``runtime:`` figure of ``model_tool
--info``. Both backends set it (bmrt directly, sail through ``EngineLLM``; sail's fallback,
``Engine``, cannot), so this shows what the flag saves, and beside it what the graphs'
instructions take (every graph keeps its own). This compiles one
layer's graphs (the prefill chunk and each decode window, random weights of the model's
shape) as ``convert`` would, reads each one's scratch with ``model_tool --info`` and
scales it to the whole model. Needs the tpu-mlir download.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from convert_time import LayerGraphs, layer_arguments  # noqa: E402

from opt_tpu_tui import toolchain  # noqa: E402


def device_bytes(bmodel: Path, scratch: Path) -> tuple[int, int]:
    """The ``instruct:`` and ``runtime:`` figures of ``model_tool --info`` for a one-net bmodel: its
    instructions and its activation scratch."""
    tool = toolchain.root()
    command = [str(tool / "bin" / "model_tool"), "--info", str(bmodel)]
    info = subprocess.run(command, env=toolchain.environment(tool, scratch), capture_output=True, text=True).stdout
    found = re.search(r"device mem size: \d+ \(weight: \d+, instruct: (\d+), runtime: (\d+)\)", info)
    if found is None:
        raise SystemExit(f"model_tool --info printed no device memory line for {bmodel}:\n{info}")
    return int(found.group(1)), int(found.group(2))


def main() -> None:
    args = layer_arguments(__doc__)
    layer = LayerGraphs(args)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-scratch-") as scratch:
        toolchain.fetch()
        for i, (label, _, _) in enumerate(layer.shapes):
            bmodel = toolchain.compile_top(layer.write(i, Path(scratch)), layer.precision, layer.group)
            rows.append((label, *device_bytes(bmodel, Path(scratch))))

    layers = layer.layers
    mb = 1e6
    print(f"\n{args.model} {args.mode}, context {args.context}, chunk {args.chunk}: activation scratch per graph")
    print(f"| graph | scratch, one layer | {layers} layers | instructions, {layers} layers |")
    print("|---|---|---|---|")
    for label, instructions, size in rows:
        print(f"| {label} | {size / mb:.2f} MB | {layers * size / mb:.1f} MB | {layers * instructions / mb:.1f} MB |")
    every = layers * sum(size for _, _, size in rows)
    code = layers * sum(instructions for _, instructions, _ in rows)
    print(f"| every graph's own (no flag; sail's Engine fallback) | | {every / mb:.1f} MB | {code / mb:.1f} MB |")
    print(f"| **the largest, shared (BM_RUNTIME_SHARE_MEM: bmrt, sail's EngineLLM)** | | "
          f"**{max(size for _, _, size in rows) / mb:.1f} MB** | |")


if __name__ == "__main__":
    main()
