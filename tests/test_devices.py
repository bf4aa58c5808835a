"""Device statistics degrade field by field: sail, then sysfs, then nothing; a failed source is not asked again."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from opt_tpu_tui.devices import MiB, DeviceMonitor, DeviceSample, HostReader, human_bytes, npu_usage
from opt_tpu_tui.tui.widgets.stats import UNAVAILABLE, StatsView, rows


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


class CountingSail:
    """A stand-in for sophon.sail's stats functions that counts calls: util works, the others fail."""

    def __init__(self, dev_stat: list[int], chip_temp_fails: bool = True) -> None:
        self.calls = {"get_tpu_util": 0, "get_dev_stat": 0, "get_chip_temp": 0}
        self._dev_stat, self._chip_temp_fails = dev_stat, chip_temp_fails

    def get_tpu_util(self, device: int) -> int:
        self.calls["get_tpu_util"] += 1
        return 37

    def get_dev_stat(self, device: int) -> list[int]:
        self.calls["get_dev_stat"] += 1
        return self._dev_stat

    def get_chip_temp(self, device: int) -> int:
        self.calls["get_chip_temp"] += 1
        if self._chip_temp_fails:  # what sail does on a SoC: an [error] line on stdout, then SailDeviceError
            raise RuntimeError("bm_get_chip_temp failed")
        return 48


def test_a_failing_source_is_polled_once_not_every_sample(tmp_path: Path) -> None:
    sail = CountingSail(dev_stat=[-1, 123456789, 7])  # the simulator's garbage: a failure, not a reading
    monitor = DeviceMonitor("sail", sys_root=tmp_path, sail=sail)
    samples = [monitor.sample() for _ in range(5)]
    assert sail.calls == {"get_tpu_util": 5, "get_dev_stat": 1, "get_chip_temp": 1}
    assert [s.tpu_util for s in samples] == [37.0] * 5
    assert samples[0].tpu_mem_used is None and samples[0].chip_temp is None
    assert samples[-1].unavailable == {"tpu_mem", "chip_temp"}


def test_sail_first_then_sysfs_on_a_soc(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    sail = CountingSail(dev_stat=[4096, 1024, 37])
    sophon = types.ModuleType("sophon")
    sophon.sail = sail  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "sophon", sophon)
    monkeypatch.setitem(sys.modules, "sophon.sail", sail)  # type: ignore[arg-type]
    (tmp_path / "class/bm-tpu/bm-tpu0/device").mkdir(parents=True)
    (tmp_path / "class/bm-tpu/bm-tpu0/device/npu_usage").write_text("usage:12 avusage:10\n")
    thermal = tmp_path / "class/thermal/thermal_zone0"
    thermal.mkdir(parents=True)
    (thermal / "temp").write_text("51234\n")
    monitor = DeviceMonitor("sail", sys_root=tmp_path)
    first, second = monitor.sample(), monitor.sample()
    assert (first.kind, first.tpu_util, first.tpu_mem_used, first.tpu_mem_total) == ("tpu", 37.0, 1024 * MiB, 4096 * MiB)
    assert first.chip_temp == second.chip_temp == pytest.approx(51.234)  # sail failed once: the thermal zone, every time
    assert sail.calls["get_chip_temp"] == 1 and not second.unavailable


def test_sysfs_only_soc(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "sophon", None)
    npu = tmp_path / "class/bm-tpu/bm-tpu0/device"
    npu.mkdir(parents=True)
    (npu / "npu_usage").write_text("usage:12 avusage:10\n")
    sample = DeviceMonitor("bmrt", sys_root=tmp_path).sample()
    assert sample.tpu_util == 12.0
    assert sample.chip_temp is None and sample.tpu_mem_used is None  # absent sources stay None
    assert sample.unavailable == {"tpu_mem", "chip_temp"}


def test_a_pcie_host_does_not_report_its_own_cpu_zone_as_the_chip(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "sophon", None)
    card = tmp_path / "class/bm-sophon/bm-sophon0/device"
    card.mkdir(parents=True)
    (card / "npu_usage").write_text('"usage": 3, "avusage": 9\n')  # the format libsophon's guide shows
    (tmp_path / "class/thermal/thermal_zone0").mkdir(parents=True)
    (tmp_path / "class/thermal/thermal_zone0/temp").write_text("45000\n")
    sample = DeviceMonitor("bmrt", sys_root=tmp_path).sample()
    assert sample.tpu_util == 3.0 and sample.chip_temp is None and "chip_temp" in sample.unavailable


@pytest.mark.parametrize(
    "text, usage",
    [("usage:12 avusage:10\n", 12.0), ('"usage": 0, "avusage": 7\n', 0.0), ("Please, set [Usage enable] to 1\n", None)],
)
def test_npu_usage_file(text: str, usage: float | None) -> None:
    assert npu_usage(text) == usage  # disabled statistics are no reading (the old first-number parse gave 1)


def test_the_pane_names_an_unavailable_figure() -> None:
    device = DeviceSample("tpu", tpu_util=5.0, unavailable=frozenset({"chip_temp", "tpu_mem"}))
    table = dict(rows(StatsView(device=device)))
    assert (table["TPU"], table["TPU mem"], table["Chip temp"]) == ("5 %", UNAVAILABLE, UNAVAILABLE)
    assert dict(rows(StatsView(device=DeviceSample("tpu"))))["Chip temp"] == "n/a"  # not given up: no value yet


def test_human_bytes() -> None:
    assert human_bytes(None) == "n/a"
    assert human_bytes(512) == "512 B"
    assert human_bytes(3 * 1024**3) == "3.0 GiB"


class FakeBmlib:
    """A stand-in for ``bmrt_lib.DeviceStats`` on a box: libbmlib's figures, counted."""

    def __init__(self, memory: tuple[int, int] | None, util: float | None) -> None:
        self._memory, self._util = memory, util
        self.calls = {"memory": 0, "tpu_util": 0}

    def memory(self) -> tuple[int, int] | None:
        self.calls["memory"] += 1
        return self._memory

    def tpu_util(self) -> float | None:
        self.calls["tpu_util"] += 1
        return self._util


def test_bmrt_without_sail_reads_device_memory_and_use_from_libbmlib(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "sophon", None)  # no sail: before, TPU memory was "unavailable" on bmrt
    bmlib = FakeBmlib(memory=(1024 * MiB, 4096 * MiB), util=23.0)
    monitor = DeviceMonitor("bmrt", device_id=1, sys_root=tmp_path, bmlib=bmlib)
    sample = monitor.sample()
    assert (sample.tpu_util, sample.tpu_mem_used, sample.tpu_mem_total) == (23.0, 1024 * MiB, 4096 * MiB)
    assert "tpu_mem" not in sample.unavailable
    table = dict(rows(StatsView(device=sample)))
    assert table["TPU mem"] != UNAVAILABLE and "GiB" in table["TPU mem"]


def test_libbmlib_zeros_count_as_unavailable_and_are_not_asked_again(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "sophon", None)
    bmlib = FakeBmlib(memory=None, util=None)  # what DeviceStats makes of the simulator's zeros
    monitor = DeviceMonitor("bmrt", sys_root=tmp_path, bmlib=bmlib)
    samples = [monitor.sample() for _ in range(3)]
    assert bmlib.calls == {"memory": 1, "tpu_util": 1}
    assert samples[-1].unavailable == {"tpu_util", "tpu_mem", "chip_temp"}


def test_device_stats_reads_libbmlib_in_the_simulator(simulator: None) -> None:
    """The real libbmlib: the chip through bm_get_chipid; the simulator's zeros are no memory reading."""
    from opt_tpu_tui.backends.bmrt_lib import DeviceStats

    stats = DeviceStats(0)
    assert stats.chip() == "BM1684X"
    assert stats.memory() is None and stats.tpu_util() is None
