"""Host work per decoded token on the TPU path, and the device traffic the graphs imply.

    python bench/tpu_host_overhead.py [--layers 32] [--tokens 16] [--context 64]

Converts a small 32-layer OPT (hidden 64, int4) and decodes with the bmrt backend in
the BM1684X simulator; then decodes again with bmrt's launch answering at once, which
leaves the host's own work per token: embedding lookup, mask, the structs of 33
launches and 64 cache-slot views, three small copies, the logits' conversion. The goal
is under 1 ms, so that the Python loop stays under 2% of an OPT-6.7B int4 token, whose
time is set by memory traffic.

The second table is that traffic, computed from the graphs: every weight once, plus the
K/V cache the decode net attends over (static shapes: a whole window of slots; at
context 512 the windows are 128, 256 and 512), divided by the ~68 GB/s of the BM1684X's
LPDDR4x. Weight bytes per parameter are those measured on tpu-mlir's W8/W4 MatMuls:
bits / 8, plus 3 bytes (float16 scale, uint8 zero point) per group of 64. The third
table bounds the first token's wait the same way (compute at the float16 peak, reads at
the bandwidth): ceilings, not measurements. Needs the [dev] extra (to make the
checkpoint) and the tpu-mlir download.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from tiny import make_model  # noqa: E402

from opt_tpu_tui.backends.bmrt import open_bmrt  # noqa: E402
from opt_tpu_tui.backends.tpu import TPUBackend  # noqa: E402
from opt_tpu_tui.convert.build import convert  # noqa: E402

BANDWIDTH = 68e9  # bytes/s, BM1684X LPDDR4x (../shared/notes/bm1684x.md)
FLOPS = 16e12  # float16 peak of the BM1684X (the notes); W4F16/W8F16 MatMuls compute in float16
VOCAB = 50272
OPT_SIZES = {  # name: hidden, layers, ffn
    "OPT-125m": (768, 12, 3072),
    "OPT-1.3b": (2048, 24, 8192),
    "OPT-2.7b": (2560, 32, 10240),
    "OPT-6.7b": (4096, 32, 16384),
}


def weight_bytes(params: float, mode: str, group: int = 64) -> float:
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


def host_overhead(layers: int, tokens: int, context: int) -> tuple[list[float], list[float]]:
    """Per token: ms of host work, and ms of simulated launches, over ``tokens`` decoded tokens.

    The loop runs twice: on the simulator, timing the launches, then with every launch
    returning at once, so that the time left is the host's own (with its three copies).
    """
    with tempfile.TemporaryDirectory(prefix="bench-tpu-") as scratch:
        checkpoint = make_model(Path(scratch) / "hf", num_hidden_layers=layers, vocab_size=512, ffn_dim=256,
                                max_position_embeddings=context)  # fmt: skip
        start = time.perf_counter()
        model_dir = convert(checkpoint, Path(scratch) / "int4", "int4", 64, context, log=lambda _: None)
        print(f"converted {2 * layers + 1} graphs in {time.perf_counter() - start:.1f} s", file=sys.stderr)
        backend = open_bmrt(model_dir)
        runtime = backend.driver.runtime
        launch = runtime.launch_tensors
        try:
            simulated = decode_times(backend, tokens)
            runtime.launch_tensors = lambda *args: None
            host = decode_times(backend, tokens)
        finally:
            runtime.launch_tensors = launch
            backend.close()
    return host, simulated


def decode_times(backend: TPUBackend, tokens: int) -> list[float]:
    """ms per decoded token after a 4-token prompt."""
    backend.prefill([2, 100, 200, 300])
    times = []
    for k in range(tokens):
        start = time.perf_counter()
        backend.decode(10 + k)
        times.append((time.perf_counter() - start) * 1e3)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--context", type=int, default=64)
    args = parser.parse_args()

    host, simulated = host_overhead(args.layers, args.tokens, args.context)
    _, _, per_token = traffic(*OPT_SIZES["OPT-6.7b"], "int4", 512)
    device_ms = per_token / BANDWIDTH * 1e3
    print(f"\n{args.layers}-layer decode on the simulator, {args.tokens} tokens (medians)")
    print("| host work per token | the same token on the simulator | OPT-6.7b int4 token at 68 GB/s | host share |")
    print("|---|---|---|---|")
    median = statistics.median(host)
    print(f"| {median:.3f} ms (max {max(host):.3f}) | {statistics.median(simulated):.0f} ms | {device_ms:.1f} ms | "
          f"{median / (device_ms + median):.2%} |")  # fmt: skip

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
