"""Device statistics degrade field by field: sail, then sysfs, then nothing; the host from /proc."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from opt_tpu_tui.devices import MiB, DeviceMonitor, HostReader, human_bytes


def test_host_reader_from_proc_without_psutil(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psutil", None)  # import fails: the /proc path is used
    (tmp_path / "meminfo").write_text("MemTotal: 8000 kB\nMemFree: 1000 kB\nMemAvailable: 6000 kB\n")
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 0 100 800 0 0 0 0 0 0\n")
    reader = HostReader(tmp_path)
    assert reader.cpu_percent() is None  # no delta yet
    stat.write_text("cpu  150 0 150 900 0 0 0 0 0 0\n")  # 100 busy of 200
    assert reader.cpu_percent() == pytest.approx(50.0)
    assert reader.memory() == (2000 * 1024, 8000 * 1024)


def test_cpu_backend_samples_the_host() -> None:
    sample = DeviceMonitor("cpu").sample()
    assert sample.kind == "host" and sample.tpu_util is None
    assert sample.mem_total and sample.mem_total > 0


def test_sail_fields_degrade_one_by_one(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    sail = types.ModuleType("sophon.sail")

    def no_temp(device: int) -> int:
        raise RuntimeError("not supported on SoC")

    sail.get_tpu_util = lambda device: 37  # type: ignore[attr-defined]
    sail.get_dev_stat = lambda device: [4096, 1024, 37]  # type: ignore[attr-defined]
    sail.get_chip_temp = no_temp  # type: ignore[attr-defined]
    sophon = types.ModuleType("sophon")
    sophon.sail = sail  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "sophon", sophon)
    monkeypatch.setitem(sys.modules, "sophon.sail", sail)
    thermal = tmp_path / "class/thermal/thermal_zone0"
    thermal.mkdir(parents=True)
    (thermal / "temp").write_text("51234\n")
    sample = DeviceMonitor("sail", sys_root=tmp_path).sample()
    assert (sample.kind, sample.tpu_util, sample.tpu_mem_used, sample.tpu_mem_total) == ("tpu", 37.0, 1024 * MiB, 4096 * MiB)
    assert sample.chip_temp == pytest.approx(51.234)  # sail raised: sysfs filled in


def test_sysfs_only_soc(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "sophon", None)
    npu = tmp_path / "class/bm-tpu/bm-tpu0/device"
    npu.mkdir(parents=True)
    (npu / "npu_usage").write_text("usage:12 avusage:10\n")
    sample = DeviceMonitor("bmrt", sys_root=tmp_path).sample()
    assert sample.tpu_util == 12.0
    assert sample.chip_temp is None and sample.tpu_mem_used is None  # absent sources stay None


def test_human_bytes() -> None:
    assert human_bytes(None) == "n/a"
    assert human_bytes(512) == "512 B"
    assert human_bytes(3 * 1024**3) == "3.0 GiB"
