"""The scratch disk a real conversion takes: bounded by its result, not by its graphs."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from opt_tpu_tui import demo
from opt_tpu_tui.convert.build import convert


def disk_used(folder: Path) -> int:
    """Bytes of disk the files under ``folder`` take: allocated blocks (a sparse file counts what it holds),
    a file with several hard links once."""
    total, seen = 0, set()
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                stat = os.lstat(os.path.join(root, name))
            except FileNotFoundError:  # deleted while walking
                continue
            if (stat.st_dev, stat.st_ino) not in seen:
                seen.add((stat.st_dev, stat.st_ino))
                total += stat.st_blocks * 512
    return total


def test_a_conversion_peaks_under_one_and_a_half_times_its_result_on_disk(
    simulator: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The demo model (4 layers, 17 graphs) at int4, with tpu-mlir's compiler.

    Between two deletions the build only grows, so its largest size is the one right before
    a deletion (or at the end): the test measures the build folder there, at every file or
    folder the conversion deletes and every block ``finish`` moves (it cuts the binary short
    behind each). Before the bound, the graphs' weight files and bmodels all stayed until
    the combine: 175 MiB for a 10 MiB result.
    """
    out = tmp_path / "out"
    peak = [0]

    def measure() -> None:
        for staging in tmp_path.glob("out.converting-*"):
            peak[0] = max(peak[0], disk_used(staging))

    def measured(function):  # type: ignore[no-untyped-def]
        def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
            measure()
            return function(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(Path, "unlink", measured(Path.unlink))
    monkeypatch.setattr(shutil, "rmtree", measured(shutil.rmtree))
    monkeypatch.setattr(os, "ftruncate", measured(os.ftruncate))
    monkeypatch.setattr(os, "replace", measured(os.replace))  # the finished folder moving into --out
    convert(demo.DEMO_MODEL_DIR, out, "int4", jobs=1, log=lambda _: None)
    result = disk_used(out)
    assert peak[0] > (out / "model.bmodel").stat().st_size, "the measurement saw the result being built"
    assert peak[0] <= 1.5 * result, f"peak {peak[0] / 2**20:.1f} MiB for a {result / 2**20:.1f} MiB result"
