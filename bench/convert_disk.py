"""Peak scratch disk of `opt-tpu-tui convert` beside the size of what it makes, for 4 and 16 layers.

    python bench/convert_disk.py [--widths 1024,4096] [--mode int4] [--context 512] [--jobs 2]

Converts random float16 checkpoints of the same widths (``bench/convert_memory.py``'s), 4 and
16 layers, with tpu-mlir's compiler and the default decode windows, and measures the
build folder (``OUT.converting-*``, allocated blocks) right before everything the
conversion deletes and every block the combine moves: between two deletions the folder only
grows, so that is its peak. Prints it beside the result's size (the converted folder:
``model.bmodel``, the host embeddings, the tokenizer); the ratio must stay flat with depth.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from convert_memory import make_checkpoint  # noqa: E402
from test_convert_disk import disk_used, files_in  # noqa: E402  (the measure the test holds convert to)

from opt_tpu_tui import toolchain  # noqa: E402
from opt_tpu_tui.convert.build import convert  # noqa: E402

MIB = 2**20


def peak_scratch(model: Path, out: Path, mode: str, context: int, jobs: int) -> tuple[int, dict[str, int]]:
    """The conversion's largest build folder, measured before each deletion it makes, and its files then."""
    peak: list = [0, {}]

    def measure() -> None:
        for staging in out.parent.glob(out.name + ".converting-*"):
            used = disk_used(staging)
            if used > peak[0]:
                peak[:] = [used, files_in(staging)]

    def measured(function):  # type: ignore[no-untyped-def]
        def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
            measure()
            return function(*args, **kwargs)

        return wrapper

    saved = Path.unlink, shutil.rmtree, os.ftruncate, os.replace
    Path.unlink, shutil.rmtree, os.ftruncate, os.replace = map(measured, saved)  # type: ignore[assignment]
    try:
        convert(model, out, mode, context=context, jobs=jobs, log=lambda _: None)
    finally:
        Path.unlink, shutil.rmtree, os.ftruncate, os.replace = saved  # type: ignore[assignment]
    return peak[0], peak[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--widths", default="1024,4096", help="hidden,ffn of the checkpoints")
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--mode", choices=("f16", "int8", "int4"), default="int4")
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--layers", default="4,16", help="the depths to convert")
    args = parser.parse_args()
    hidden, ffn = map(int, args.widths.split(","))
    toolchain.fetch()
    rows = []
    breakdowns: list[tuple[int, dict[str, int]]] = []
    with tempfile.TemporaryDirectory(prefix="bench-convert-disk-") as scratch_name:
        scratch = Path(scratch_name)
        for layers in map(int, args.layers.split(",")):
            model = scratch / f"opt-{layers}"
            make_checkpoint(model, hidden, ffn, hidden // 64, layers, args.vocab)
            out = scratch / f"out-{layers}"
            start = time.perf_counter()
            peak, files = peak_scratch(model, out, args.mode, args.context, args.jobs)
            breakdowns.append((layers, files))
            print(f"converted {layers} layers in {time.perf_counter() - start:.0f} s", file=sys.stderr)
            rows.append((layers, disk_used(model), disk_used(out), (out / "model.bmodel").stat().st_size, peak))
            shutil.rmtree(out)
            shutil.rmtree(model)
    print(f"\nconvert --mode {args.mode} --context {args.context} --jobs {args.jobs}, hidden {hidden}, ffn {ffn}, "
          f"vocab {args.vocab}: peak scratch disk against the result")
    print("| layers | float16 checkpoint | result (model.bmodel) | peak scratch | peak / result |")
    print("|---|---|---|---|---|")
    for layers, checkpoint, result, bmodel, peak in rows:
        print(f"| {layers} | {checkpoint / MIB:.0f} MiB | {result / MIB:.0f} MiB ({bmodel / MIB:.0f} MiB) | "
              f"{peak / MIB:.0f} MiB | **{peak / result:.2f}x** |")

    for layers, files in breakdowns:
        print(f"\nat the peak, {layers} layers: the build folder's files")
        for name, size in sorted(files.items(), key=lambda item: -item[1]):
            if size >= MIB // 2:
                print(f"  {size / MIB:7.1f} MiB  {name}")


if __name__ == "__main__":
    main()
