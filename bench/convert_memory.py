"""Peak memory of `opt-tpu-tui convert`: does it grow with the model's depth, and what does OPT-6.7B/13B need?

    python bench/convert_memory.py [--widths 1024,4096] [--mode int4] [--jobs 2] [--no-compile] [--no-projection]

Each conversion runs in a child process of its own, which reports its own peak RSS (VmHWM:
the Python side, reading the checkpoint and writing each graph's MLIR and weights; not
``ru_maxrss``, which Linux floors at the parent's RSS when the child was forked) and the
largest RSS of a tpuc-opt run (sampled every 50 ms; ``--jobs`` of them run at once). First two
random float16 checkpoints of the same widths, 4 and 16 layers, are converted, once with
the compile step stubbed out (the Python side alone) and once with tpu-mlir's compiler.
Then, for the projection, checkpoints of OPT-6.7B's and OPT-13B's real widths and vocabulary
with 2 layers are converted: the peaks do not depend on the layer count (the first table
shows it), so these are the real models' peaks. "All processes at once" is the largest
sum of the Python side's and the tpuc-opt runs' RSS in one sample. Needs the tpu-mlir
download unless ``--no-compile``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from test_convert_disk import make_checkpoint  # noqa: E402, F401  (the checkpoints the tests convert too)
from tpu_host_overhead import BANDWIDTH, traffic  # noqa: E402

MIB = 2**20
ROOT = Path(__file__).resolve().parents[1]  # the children run this checkout's opt_tpu_tui
SHAPES = {"OPT-6.7b": (4096, 16384, 32, 32), "OPT-13b": (5120, 20480, 40, 40)}  # hidden, ffn, heads, layers


WATCH = """
import psutil, sys, threading, time
from pathlib import Path

def hwm_bytes():  # this process's own peak RSS: ru_maxrss would count the parent's RSS at the fork
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]) * 1024

tpuc_peak = [0]
together_peak = [0]

def watch():  # tpuc-opt children, by name, and with this process: sampled every 50 ms over runs of seconds
    me = psutil.Process()
    while True:
        together = me.memory_info().rss
        for child in me.children(recursive=True):
            try:
                if child.name() == "tpuc-opt":
                    rss = child.memory_info().rss
                    tpuc_peak[0] = max(tpuc_peak[0], rss)
                    together += rss
            except psutil.Error:
                pass
        together_peak[0] = max(together_peak[0], together)
        time.sleep(0.05)

threading.Thread(target=watch, daemon=True).start()
"""

CHILD = WATCH + """
import json
from opt_tpu_tui import toolchain
from opt_tpu_tui.convert import build
from opt_tpu_tui.convert.build import convert

model, out, mode, context, jobs, compile_ = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6] == "1"
if not compile_:
    def compile_top(top_mlir, mode, group_size=0, scratch=None, **_):
        bmodel = top_mlir.with_suffix(".bmodel")
        bmodel.write_bytes(b"stand-in")
        return bmodel
    toolchain.compile_top = compile_top
    class Combined:
        def __init__(self, binary): pass
        def add(self, bmodel): pass
        def close(self): pass
        def finish(self, out, order): out.write_bytes(b"stand-in")
    build.Combined = Combined
convert(Path(model), Path(out), mode, 64 if mode != "f16" else 0, context, jobs=jobs, log=lambda _: None, windows=[context])
print(json.dumps({"python": hwm_bytes(), "tpuc_opt": tpuc_peak[0], "together": together_peak[0]}))
"""


def peak_rss(model: Path, out: Path, mode: str, context: int, jobs: int, compile_: bool) -> dict[str, int]:
    """Peak RSS in bytes of a conversion in a child process: {"python": its own, "tpuc_opt": its largest child's}."""
    args = [sys.executable, "-c", CHILD, str(model), str(out), mode, str(context), str(jobs), "1" if compile_ else "0"]
    return run_child(args)


def run_child(args: list[str]) -> dict[str, int]:
    """The JSON a child process prints last."""
    result = subprocess.run(args, capture_output=True, text=True, check=False, cwd=ROOT)
    if result.returncode:
        raise SystemExit(f"{args[3:]} failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--widths", default="1024,4096", help="hidden,ffn of the 4- and 16-layer checkpoints")
    parser.add_argument("--vocab", type=int, default=8192, help="their vocabulary (small, so the layers dominate)")
    parser.add_argument("--mode", choices=("f16", "int8", "int4"), default="int4")
    parser.add_argument("--context", type=int, default=64)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--no-compile", action="store_true", help="the Python side only (no tpu-mlir needed)")
    parser.add_argument("--no-projection", action="store_true", help="skip OPT-6.7B/13B (8 GB of scratch files)")
    args = parser.parse_args()
    hidden, ffn = map(int, args.widths.split(","))
    heads = hidden // 64

    with tempfile.TemporaryDirectory(prefix="bench-convert-memory-") as scratch_name:
        scratch = Path(scratch_name)
        if not args.no_compile:
            from opt_tpu_tui import toolchain

            toolchain.fetch()
        rows = []
        for compile_ in [False] + ([] if args.no_compile else [True]):
            peaks = {}
            for layers in (4, 16):
                model = scratch / f"opt-{layers}"
                if not model.exists():
                    make_checkpoint(model, hidden, ffn, heads, layers, args.vocab)
                out = scratch / f"out-{layers}-{int(compile_)}"
                peaks[layers] = peak_rss(model, out, args.mode, args.context, args.jobs, compile_)
                shutil.rmtree(out)
            rows.append((compile_, peaks))
        layer_mib = (4 * hidden * hidden + 2 * hidden * ffn) * 2 / MIB
        print(f"\nconvert --mode {args.mode} --context {args.context} --jobs {args.jobs}: random float16 checkpoints, "
              f"hidden {hidden}, ffn {ffn}, vocab {args.vocab} ({layer_mib:.0f} MiB per layer)")  # fmt: skip
        print("| compile step | layers | checkpoint | peak RSS, Python side | peak RSS, largest tpuc-opt |")
        print("|---|---|---|---|---|")
        for compile_, peaks in rows:
            for layers, peak in peaks.items():
                size = (scratch / f"opt-{layers}" / "model.safetensors").stat().st_size / MIB
                tpuc = f"{peak['tpuc_opt'] / MIB:.0f} MiB" if compile_ else "(stubbed)"
                print(f"| {'tpu-mlir' if compile_ else 'stubbed'} | {layers} | {size:.0f} MiB | "
                      f"{peak['python'] / MIB:.0f} MiB | {tpuc} |")  # fmt: skip
            print(f"| | **16 / 4 layers** | | **{peaks[16]['python'] / peaks[4]['python']:.3f}** | |")
        if args.no_projection:
            return
        print("\nThe real models' widths and vocabulary, 2 layers (the peaks do not grow with the layer count), "
              "context 512, one decode window")  # fmt: skip
        print("| model | float16 checkpoint, all layers | Python side | largest tpuc-opt | all processes at once |")
        print("|---|---|---|---|---|")
        for name, (width, ffn_dim, n_heads, layers) in SHAPES.items():
            model = make_checkpoint(scratch / name, width, ffn_dim, n_heads, 2, 50272)
            peak = peak_rss(model, scratch / f"{name}-out", args.mode, 512, args.jobs, not args.no_compile)
            full = ((4 * width * width + 2 * width * ffn_dim) * layers + 50272 * width) * 2 / 2**30
            tpuc = "(stubbed)" if args.no_compile else f"{peak['tpuc_opt'] / MIB:.0f} MiB"
            together = "(stubbed)" if args.no_compile else f"{peak['together'] / MIB:.0f} MiB"
            print(f"| {name} | {full:.1f} GiB | {peak['python'] / MIB:.0f} MiB | {tpuc} | {together} |")
            shutil.rmtree(model)
            shutil.rmtree(scratch / f"{name}-out", ignore_errors=True)
    device_memory()


def device_memory() -> None:
    """The README's device-memory rows for these models, by bench/tpu_host_overhead.py's formulas."""
    print("\nDevice memory at context 512 (bench/tpu_host_overhead.py's formulas)")
    print("| model | precision | weights on device | KV cache | read per token | ceiling tok/s |")
    print("|---|---|---|---|---|---|")
    for name, (width, ffn_dim, _, layers) in SHAPES.items():
        for mode in ("int8", "int4"):
            weights, kv, total = traffic(width, layers, ffn_dim, mode, 512)
            short = traffic(width, layers, ffn_dim, mode, 128)[2]
            print(f"| {name} | {mode} | {weights / 1e9:.2f} GB | {kv / 1e9:.2f} GB | {short / 1e9:.2f} / "
                  f"{total / 1e9:.2f} GB | {BANDWIDTH / short:.1f} / {BANDWIDTH / total:.1f} |")  # fmt: skip


if __name__ == "__main__":
    main()
