"""Host work per decoded token on the TPU path, and the device traffic the graphs imply.

    python bench/tpu_host_overhead.py [--layers 32] [--tokens 16] [--runs 7] [--context 64]
                                      [--model DIR] [--no-simulator]

Converts a small 32-layer OPT (hidden 64, int4; its vocabulary OPT's 50,272 rows, so
that the logits weigh what they do in a real model), or takes an already converted model
(``--model``), and decodes greedily with ``backends.tpu`` on drivers that have nothing
behind them, so that no simulator is loaded while the host is timed (the simulator's
threads keep a core busy for as long as it is open, which once tripled the figure on a
2-core machine): first a null driver whose buffers are host arrays and whose launches
return at once, which leaves tpu.py's own work per token (embedding lookup, mask, 33
launches' argument lists, 64 cache-slot views, the small host copies); then the bmrt
driver itself on a runtime stub with no library, which adds the ctypes structs each
launch builds. Each driver runs both ways a greedy token can be taken: the logits
downloaded (100 kB in float16), widened to float32 and the argmax taken on the host, as
every sampled token still is and a model converted before the greedy head does; and the
greedy head's id and logit downloaded instead (``lm_head_top1``, the argmax on the
device). A null driver copies its "downloads" in host memory, so the first way's cost
here is the copy, the conversion and the argmax, not the PCIe or SoC transfer. Each
pass runs ``--runs`` times and the table gives the min, median and max over the runs
of the median ms per token. Last, as the reference, the same tokens on the BM1684X
simulator (skipped with ``--no-simulator``). The goal is under 1 ms on x86, so that
the Python loop stays near 2% of an OPT-6.7B int4 token on a box's slower cores, the
token's time being set by memory traffic.

The second table is that traffic, computed from the graphs: every weight once, plus the
K/V cache the decode net attends over (static shapes: a whole window of slots; at
context 512 the windows are 128, 256 and 512), divided by the ~68 GB/s of the BM1684X's
LPDDR4x. Weight bytes per parameter are those measured on tpu-mlir's W8/W4 MatMuls:
bits / 8, plus 3 bytes (float16 scale, uint8 zero point) per group of 128, ``convert``'s
default (``converted.DEFAULT_GROUP_SIZE``). The third
table bounds the first token's wait the same way (compute at the float16 peak, reads at
the bandwidth): ceilings, not measurements. Converting needs the [dev] extra (to make
the checkpoint) and the tpu-mlir download; ``--model`` with ``--no-simulator`` needs
neither, which is how it runs under an interpreter without them (Python 3.8).
"""

from __future__ import annotations

import argparse
import gc
import math
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from opt_tpu_tui.backends import bmrt_lib  # noqa: E402
from opt_tpu_tui.backends.bmrt import BmrtDriver  # noqa: E402
from opt_tpu_tui.backends.tpu import ACTIVATION_DTYPES, TPUBackend, expected_io, host_dtype, top1_io  # noqa: E402
from opt_tpu_tui.converted import DEFAULT_GROUP_SIZE, LM_HEAD_TOP1, Manifest  # noqa: E402
from opt_tpu_tui.errors import UserError  # noqa: E402

BANDWIDTH = 68e9  # bytes/s, BM1684X LPDDR4x (../shared/notes/bm1684x.md)
FLOPS = 16e12  # float16 peak of the BM1684X (the notes); W4F16/W8F16 MatMuls compute in float16
VOCAB = 50272
OPT_SIZES = {  # name: hidden, layers, ffn
    "OPT-125m": (768, 12, 3072),
    "OPT-1.3b": (2048, 24, 8192),
    "OPT-2.7b": (2560, 32, 10240),
    "OPT-6.7b": (4096, 32, 16384),
}


def weight_bytes(params: float, mode: str, group: int = DEFAULT_GROUP_SIZE) -> float:
    return params * {"f16": 2.0, "int8": 1 + 3 / group, "int4": 0.5 + 3 / group}[mode]


def block_params(hidden: int, layers: int, ffn: int) -> int:
    """Weights the decoder layers multiply by: q, k, v, out and the two FFN matrices."""
    return layers * (4 * hidden * hidden + 2 * hidden * ffn)


def prefill_ceiling_ms(hidden: int, layers: int, ffn: int, mode: str, context: int, prompt: int, chunk: int) -> float:
    """Lower bound on the device time of a prompt: per launch set the larger of its
    compute at FLOPS and its reads at BANDWIDTH. ``chunk`` = ``context`` with no cache is
    the old single pass over the whole padded context."""
    weights, kv, _ = traffic(hidden, layers, ffn, mode, context)
    one_pass = chunk == context
    keys = context if one_pass else context + chunk
    flops = 2 * block_params(hidden, layers, ffn) * chunk + 4 * layers * chunk * keys * hidden  # matmuls, then QK^T and PV
    reads = weights + (0 if one_pass else kv)
    launches = 1 if one_pass else -(-prompt // chunk)
    return launches * max(flops / FLOPS, reads / BANDWIDTH) * 1e3


def traffic(hidden: int, layers: int, ffn: int, mode: str, context: int) -> tuple[float, float, float]:
    """(weight bytes, KV cache bytes, bytes read per decoded token) for an OPT shape."""
    weights = weight_bytes(block_params(hidden, layers, ffn) + VOCAB * hidden, mode)
    kv = 2 * layers * context * hidden * 2  # float16 K and V
    return weights, kv, weights + kv


class NullDriver:
    """``tpu.Driver`` with nothing behind it: buffers are host arrays, copies are host copies, launches return at once.

    ``head``: whether the model has the greedy head (``lm_head_top1``), as a conversion since it has.
    """

    def __init__(self, model_dir: Path, head: bool = True) -> None:
        manifest = Manifest.load(model_dir)
        dtype = ACTIVATION_DTYPES[manifest.activations]
        self.nets = {net: ([(s, dtype) for s in ins], [(s, dtype) for s in outs])
                     for net, (ins, outs) in expected_io(manifest).items()}  # fmt: skip
        if head:
            self.nets[LM_HEAD_TOP1] = top1_io(manifest)

    def io(self, net: str) -> tuple[list[tuple[tuple[int, ...], str]], list[tuple[tuple[int, ...], str]]]:
        if net not in self.nets:
            raise UserError(f"no net {net}")
        return self.nets[net]

    def net_names(self) -> list[str]:
        return list(self.nets)

    def alloc(self, shape: tuple[int, ...], dtype: str, host: bool = False) -> np.ndarray:
        return np.zeros(shape, host_dtype(dtype))

    def view(self, buffer: np.ndarray, offset: int, shape: tuple[int, ...]) -> np.ndarray:
        return buffer.reshape(-1)[offset : offset + math.prod(shape)].reshape(shape)

    def upload(self, buffer: np.ndarray, array: np.ndarray) -> None:
        buffer.reshape(-1)[...] = array.reshape(-1)

    def download(self, buffer: np.ndarray, array: np.ndarray) -> None:
        array.reshape(-1)[...] = buffer.reshape(-1)

    def launch(self, net: str, inputs: list[Any], outputs: list[Any]) -> None:
        pass

    def close(self) -> None:
        pass


class NullRuntime:
    """``bmrt_lib.Runtime``'s surface with no library loaded: device addresses are a counter,
    copies and launches do nothing, and the bm_tensor_t structs are built as the real one builds them."""

    tensor = bmrt_lib.Runtime.tensor  # uses no library: the struct building the driver pays for

    def __init__(self, model_dir: Path, head: bool = True) -> None:
        self.driver = NullDriver(model_dir, head)
        self.next_address = 1 << 32

    def net_names(self) -> list[str]:
        return self.driver.net_names()

    def net(self, name: str) -> Any:
        ins, outs = self.driver.io(name)
        found = type("Net", (), {})()
        found.input_shapes, found.input_dtypes = [s for s, _ in ins], [t for _, t in ins]
        found.output_shapes, found.output_dtypes = [s for s, _ in outs], [t for _, t in outs]
        return found

    def malloc(self, nbytes: int) -> bmrt_lib.DeviceMemory:
        block = bmrt_lib.DeviceMemory(self.next_address, 0, 0, 0, nbytes)
        self.next_address += nbytes
        return block

    def upload(self, mem: bmrt_lib.DeviceMemory, array: np.ndarray) -> None:
        pass

    def download(self, mem: bmrt_lib.DeviceMemory, array: np.ndarray) -> np.ndarray:
        return array

    def launch_tensors(self, net: bytes, inputs: Any, outputs: Any) -> None:
        pass

    def close(self) -> None:
        pass


class StubbedBmrtDriver(BmrtDriver):
    """The bmrt driver as it is, on a ``NullRuntime``."""

    def __init__(self, model_dir: Path, head: bool = True) -> None:
        self.runtime = NullRuntime(model_dir, head)  # type: ignore[assignment]


def convert_tiny(scratch: Path, layers: int, context: int) -> Path:
    from tiny import make_model

    from opt_tpu_tui.convert.build import convert

    checkpoint = make_model(scratch / "hf", num_hidden_layers=layers, vocab_size=VOCAB, ffn_dim=256,
                            max_position_embeddings=context)  # fmt: skip
    start = time.perf_counter()
    model_dir = convert(checkpoint, scratch / "int4", "int4", 64, context, log=lambda _: None)
    print(f"converted {2 * layers + 2} graphs in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return model_dir


def host_runs(model_dir: Path, open_driver: Callable[[Path], Any], runs: int, tokens: int) -> list[float]:
    """The median ms per greedy token of each of ``runs`` runs, after one untimed warm-up run."""
    backend = TPUBackend("null", model_dir, open_driver)
    try:
        decode_times(backend, tokens)
        return [statistics.median(decode_times(backend, tokens)) for _ in range(runs)]
    finally:
        backend.close()


def decode_times(backend: TPUBackend, tokens: int) -> list[float]:
    """ms per greedy token after a 4-token prompt: decoded and picked, as ``generation`` asks for it
    (``argmax_below``): on the device with the greedy head, else from the logits on the host."""
    below = backend.vocab_size - 7  # OPT's tokenizer has 7 ids fewer than the logits' rows
    backend.prefill([2, 100, 200, 300], argmax_below=below)
    gc.collect()
    times = []
    for k in range(tokens):
        start = time.perf_counter()
        backend.decode(10 + k, argmax_below=below)
        times.append((time.perf_counter() - start) * 1e3)
    return times


def simulated(model_dir: Path, tokens: int) -> float:
    """Median ms per token with every launch run by the simulator (loaded only now, after the host passes)."""
    from opt_tpu_tui.backends.bmrt import open_bmrt

    backend = open_bmrt(model_dir)
    try:
        return statistics.median(decode_times(backend, tokens))
    finally:
        backend.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--context", type=int, default=64)
    parser.add_argument("--model", type=Path, help="a converted model directory (skips the conversion)")
    parser.add_argument("--no-simulator", action="store_true", help="skip the reference pass on the simulator")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-tpu-") as scratch:
        model_dir = args.model or convert_tiny(Path(scratch), args.layers, args.context)
        layers = Manifest.load(model_dir).config.num_hidden_layers
        drivers = {"tpu.py on a null driver": NullDriver, "tpu.py + bmrt driver on a null runtime": StubbedBmrtDriver}
        ways = {"logits + host argmax": False, "greedy head on the device": True}
        passes = {
            f"{driver}, {way}": host_runs(model_dir, lambda _, d=make, h=head: d(model_dir, h), args.runs, args.tokens)
            for driver, make in drivers.items() for way, head in ways.items()
        }  # fmt: skip
        reference = None if args.no_simulator else simulated(model_dir, args.tokens)

    print(f"\nHost work per decoded token, {layers}-layer model, Python {platform.python_version()}, numpy "
          f"{np.__version__}, {platform.machine()}: {args.runs} runs of {args.tokens} tokens, no simulator loaded")  # fmt: skip
    print("| pass | min | median | max |")
    print("|---|---|---|---|")
    for name, medians in passes.items():
        print(f"| {name} | {min(medians):.3f} ms | {statistics.median(medians):.3f} ms | {max(medians):.3f} ms |")

    _, _, per_token = traffic(*OPT_SIZES["OPT-6.7b"], "int4", 512)
    device_ms = per_token / BANDWIDTH * 1e3
    host = statistics.median(passes["tpu.py + bmrt driver on a null runtime, greedy head on the device"])
    sim = "not run" if reference is None else f"{reference:.0f} ms"
    print("\nAgainst the device: the host's median (bmrt driver) beside the same token on the simulator and")
    print("an OPT-6.7b int4 token at the bandwidth ceiling")
    print("| host work per token | the same token on the simulator | OPT-6.7b int4 token at 68 GB/s | host share |")
    print("|---|---|---|---|")
    print(f"| {host:.3f} ms | {sim} | {device_ms:.1f} ms | {host / (device_ms + host):.2%} |")

    print("\nDevice memory traffic per decoded token at context 512, and the ceiling it sets, in the first")
    print("decode window (positions up to 128) and in the last (up to 512)")
    print("| model | precision | weights on device | KV cache | read per token | ceiling tok/s |")
    print("|---|---|---|---|---|---|")
    for name, shape in OPT_SIZES.items():
        for mode in ("int8", "int4"):
            weights, kv, total = traffic(*shape, mode, 512)
            short = traffic(*shape, mode, 128)[2]
            print(f"| {name} | {mode} | {weights / 1e9:.2f} GB | {kv / 1e9:.2f} GB | {short / 1e9:.2f} / "
                  f"{total / 1e9:.2f} GB | {BANDWIDTH / short:.1f} / {BANDWIDTH / total:.1f} |")  # fmt: skip

    shape, prompts = OPT_SIZES["OPT-6.7b"], (16, 64, 200, 500)
    print("\nFirst-token ceilings, OPT-6.7b int4 at context 512: the prompt's device time at best (roofline:")
    print("16 TFLOPS, 68 GB/s), in chunks of 64 over the cache against one pass over the padded context")
    print("| prompt tokens | " + " | ".join(map(str, prompts)) + " |")
    print("|---|" + "---|" * len(prompts))
    for label, chunk in (("chunks of 64 (now)", 64), ("one pass of 512", 512)):
        cells = [f"{prefill_ceiling_ms(*shape, 'int4', 512, n, chunk):.0f} ms" for n in prompts]
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
