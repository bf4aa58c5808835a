"""Device statistics for the stats pane, read off the UI thread about once a second.

Every field degrades on its own, and every source is asked until it first fails: a
source that raises or gives no sensible value is not polled again, and the field it
fed is reported unavailable once no source is left for it. Polling a broken source
every second would cost a device handle each time and, through sail, an ``[error]``
line on stdout each time: sophon-sail 3.10.7's stats functions (``src/tensor.cpp``)
log through spdlog and then throw ``SailDeviceError`` on every failure, so the raise
is the signal and one failure means one line in the native-output log.

Sources, best first:

- ``sophon.sail`` (all in sail's ``src/tensor.cpp``): ``get_tpu_util``,
  ``get_dev_stat`` -> [mem_total MiB, mem_used MiB, tpu_util] (garbage in the
  simulator, hence the range checks), ``get_chip_temp`` (fails on SoC boxes);
- where sail is not importable (a box running ``--backend bmrt``), libsophon's own libbmlib
  through ``bmrt_lib.DeviceStats``: ``bm_get_stat`` (TPU use, memory in MiB) and the heaps'
  byte counts (``bm_get_gmem_heap_stat_byte_by_id``); the simulator's libbmlib answers with
  zeros, which count as a failure;
- sysfs, documented in libsophon's ``doc/guide_en/3_3_sysfs_interface_description.rst``
  and written by its ``driver/bm_attr.c``: ``npu_usage`` under
  ``/sys/class/bm-sophon/bm-sophon<N>/device`` (PCIe) or ``/sys/class/bm-tpu/bm-tpu<N>/device``
  (SoC), "usage:<instant> avusage:<since load>", or a request to enable it. That driver
  creates no other attribute (no memory or temperature files), so memory and, on PCIe,
  temperature come from sail only;
- on a SoC only (the ``bm-tpu`` class exists), ``/sys/class/thermal/thermal_zone0/temp``
  in milli-degrees, the chip temperature Sophgo's ``get_info.sh`` reports for SoC boxes
  (on a PCIe host that zone is the host's CPU, so it is not read there);
- the host: CPU from ``/proc/stat`` deltas and memory from ``/proc/meminfo``, or
  psutil when it is importable (a dev extra only).

No Textual import: the UI runs :meth:`DeviceMonitor.sample` in a thread worker.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Optional, TypeVar

MiB = 1024 * 1024
T = TypeVar("T")
TPU_FIELDS = ("tpu_util", "tpu_mem", "chip_temp")


@dataclass(frozen=True)
class DeviceSample:
    """One reading; every figure may be None when its source is unavailable."""

    kind: str  # "tpu" or "host"
    tpu_util: float | None = None  # percent
    tpu_mem_used: int | None = None  # bytes
    tpu_mem_total: int | None = None  # bytes
    chip_temp: float | None = None  # degrees C
    cpu_percent: float | None = None
    mem_used: int | None = None  # bytes
    mem_total: int | None = None  # bytes
    unavailable: frozenset[str] = frozenset()  # of TPU_FIELDS: every source failed, none is polled any more


class Source(Generic[T]):
    """One way to read one figure, polled until it first fails, then never again.

    A read fails when it raises or returns None (a value out of range is returned as
    None by the read itself).
    """

    def __init__(self, name: str, read: Callable[[], Optional[T]]) -> None:
        self.name = name
        self._read = read
        self.failed = False

    def __call__(self) -> T | None:
        if self.failed:
            return None
        try:
            value = self._read()
        except Exception:  # noqa: BLE001 - sail raises SailDeviceError, RuntimeError and worse
            value = None
        if value is None:
            self.failed = True
        return value


class Field(Generic[T]):
    """A figure and its sources, best first: the first source that gives a value wins this sample."""

    def __init__(self, sources: list[Source[T]]) -> None:
        self.sources = sources

    def read(self) -> T | None:
        for source in self.sources:
            value = source()
            if value is not None:
                return value
        return None

    @property
    def unavailable(self) -> bool:
        return all(source.failed for source in self.sources)


def in_range(value: float, low: float, high: float) -> float | None:
    """``value`` if within [low, high], else None: a figure outside is garbage, not a reading."""
    return value if low <= value <= high else None


def npu_usage(text: str) -> float | None:
    """The instant usage from a libsophon ``npu_usage`` file; None when statistics are disabled."""
    match = re.search(r"(?<!av)usage\W*(\d+)", text)
    return in_range(float(match.group(1)), 0, 100) if match else None


def memory_stat(stat: Any) -> tuple[int, int] | None:
    """(used, total) bytes from sail's ``get_dev_stat`` [total MiB, used MiB, util], if it makes sense."""
    values = [int(v) for v in stat]
    if len(values) < 2 or values[0] <= 0 or not 0 <= values[1] <= values[0]:
        return None
    return values[1] * MiB, values[0] * MiB


class HostReader:
    """Host CPU share (between two calls) and memory from /proc, or psutil if importable."""

    def __init__(self, proc: Path = Path("/proc")) -> None:
        self.proc = proc
        self._last: tuple[int, int] | None = None
        try:
            import psutil  # type: ignore[import-untyped]

            self._psutil: Any = psutil
            psutil.cpu_percent(None)  # the first call primes the delta
        except Exception:  # noqa: BLE001 - psutil is optional
            self._psutil = None

    def cpu_percent(self) -> float | None:
        if self._psutil is not None:
            return float(self._psutil.cpu_percent(None))
        fields = (self.proc / "stat").read_text().splitlines()[0].split()[1:]
        values = [int(v) for v in fields]
        idle = values[3] + (values[4] if len(values) > 4 else 0)
        total = sum(values[:8])
        last, self._last = self._last, (idle, total)
        if last is None or total == last[1]:
            return None
        return 100.0 * (1 - (idle - last[0]) / (total - last[1]))

    def memory(self) -> tuple[int, int]:
        """(used, total) bytes."""
        if self._psutil is not None:
            vm = self._psutil.virtual_memory()
            return int(vm.total - vm.available), int(vm.total)
        info: dict[str, int] = {}
        for line in (self.proc / "meminfo").read_text().splitlines():
            name, _, rest = line.partition(":")
            info[name] = int(rest.split()[0]) * 1024
        total = info["MemTotal"]
        return total - info.get("MemAvailable", info.get("MemFree", 0)), total


def _try(read: Callable[[], Any]) -> Any:
    """The value of ``read()``, or None if it raises: the host figures are cheap and may fail once."""
    try:
        return read()
    except Exception:  # noqa: BLE001
        return None


class DeviceMonitor:
    """Samples the TPU (sail, then sysfs) when the backend runs on one, else the host."""

    def __init__(
        self, backend_name: str, device_id: int = 0, sys_root: Path = Path("/sys"), sail: Any = None, bmlib: Any = None
    ) -> None:
        self.device_id = device_id
        self.on_tpu = backend_name in ("bmrt", "sail")
        self.host = HostReader()
        if sail is None and self.on_tpu:
            sail = _import_sail()
        if bmlib is None and sail is None and self.on_tpu:
            bmlib = _bmlib_stats(device_id)
        self.fields = tpu_fields(sail, device_id, sys_root, bmlib) if self.on_tpu else {}

    def sample(self) -> DeviceSample:
        cpu = _try(self.host.cpu_percent)
        memory = _try(self.host.memory) or (None, None)
        if not self.on_tpu:
            return DeviceSample("host", cpu_percent=cpu, mem_used=memory[0], mem_total=memory[1])
        tpu_mem = self.fields["tpu_mem"].read() or (None, None)
        return DeviceSample(
            "tpu",
            self.fields["tpu_util"].read(),
            tpu_mem[0],
            tpu_mem[1],
            self.fields["chip_temp"].read(),
            cpu_percent=cpu,
            mem_used=memory[0],
            mem_total=memory[1],
            unavailable=frozenset(name for name, field in self.fields.items() if field.unavailable),
        )


def _import_sail() -> Any:
    try:
        import sophon.sail as sail  # type: ignore[import-not-found]
    except Exception:  # noqa: BLE001 - not installed off the box
        return None
    return sail


def _bmlib_stats(device: int) -> Any:
    """libbmlib's statistics for ``device`` (``bmrt_lib.DeviceStats``) where libsophon is installed, else None.

    Not in the simulator: its libbmlib keeps no statistics (``bm_get_stat`` gives zeros), and
    asking would open the simulated device, whose threads keep a core busy, for nothing.
    """
    try:
        from opt_tpu_tui.backends.bmrt_lib import DeviceStats, on_device

        return DeviceStats(device) if on_device() else None
    except Exception:  # noqa: BLE001 - no libsophon and no simulator: the figures stay unavailable
        return None


def tpu_fields(sail: Any, device: int, sys_root: Path, bmlib: Any = None) -> dict[str, Field[Any]]:
    """The TPU figures' sources for ``device``: sail's functions where sail is importable, else libbmlib's
    (``bmlib``: an object with ``tpu_util()`` and ``memory()``, as ``bmrt_lib.DeviceStats``), then sysfs."""
    util: list[Source[float]] = []
    mem: list[Source[tuple[int, int]]] = []
    temp: list[Source[float]] = []
    if sail is not None:
        util.append(Source("sail.get_tpu_util", lambda: in_range(float(sail.get_tpu_util(device)), 0, 100)))
        mem.append(Source("sail.get_dev_stat", lambda: memory_stat(sail.get_dev_stat(device))))
        temp.append(Source("sail.get_chip_temp", lambda: in_range(float(sail.get_chip_temp(device)), -40, 150)))
    if bmlib is not None:
        util.append(Source("libbmlib bm_get_stat", bmlib.tpu_util))
        mem.append(Source("libbmlib heaps", bmlib.memory))
    soc = sys_root / f"class/bm-tpu/bm-tpu{device}/device/npu_usage"
    pcie = sys_root / f"class/bm-sophon/bm-sophon{device}/device/npu_usage"
    for path in (soc, pcie):
        if path.exists():
            util.append(Source(str(path), lambda path=path: npu_usage(path.read_text())))
    thermal = sys_root / "class/thermal/thermal_zone0/temp"
    if soc.exists() and thermal.exists():
        temp.append(Source(str(thermal), lambda: in_range(float(thermal.read_text()) / 1000, -40, 150)))
    return {"tpu_util": Field(util), "tpu_mem": Field(mem), "chip_temp": Field(temp)}


def human_bytes(n: int | None) -> str:
    if n is None:
        return "n/a"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"  # pragma: no cover
