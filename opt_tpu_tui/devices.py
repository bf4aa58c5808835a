"""Device statistics for the stats pane, read off the UI thread about once a second.

Every field degrades on its own: a source that is missing or raises leaves that
field ``None`` (shown as "n/a"), never the whole sample. Sources, best first:

- TPU through ``sophon.sail`` (``get_tpu_util``, ``get_dev_stat`` -> [total MiB,
  used MiB, util], ``get_chip_temp`` which raises on SoC boxes);
- TPU through sysfs: ``/sys/class/bm-tpu/bm-tpu0/device/npu_usage`` (SoC),
  ``/sys/class/bm-sophon/bm-sophon0/device/...`` (PCIe cards), the SoC temperature in
  ``/sys/class/thermal/thermal_zone0/temp``;
- the host: CPU from ``/proc/stat`` deltas and memory from ``/proc/meminfo``, or
  psutil when it is importable (a dev extra only).

No Textual import: the UI runs :meth:`DeviceMonitor.sample` in a thread worker.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MiB = 1024 * 1024


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


def _try(read: Callable[[], Any]) -> Any:
    """The value of ``read()``, or None if it raises: one field's failure must not hide the others."""
    try:
        return read()
    except Exception:  # noqa: BLE001 - sail raises plain RuntimeError and worse on SoC boxes
        return None


def _first_number(text: str) -> float:
    match = re.search(r"-?\d+(?:\.\d+)?", text)
    if match is None:
        raise ValueError(f"no number in {text!r}")
    return float(match.group())


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


class DeviceMonitor:
    """Samples the TPU (sail, then sysfs) when the backend runs on one, else the host."""

    def __init__(self, backend_name: str, device_id: int = 0, sys_root: Path = Path("/sys")) -> None:
        self.on_tpu = backend_name in ("bmrt", "sail")
        self.device_id = device_id
        self.sys = sys_root
        self.host = HostReader()
        self._sail: Any = None
        if self.on_tpu:
            try:
                import sophon.sail as sail  # type: ignore[import-not-found]

                self._sail = sail
            except Exception:  # noqa: BLE001 - not installed off the box
                self._sail = None

    def sample(self) -> DeviceSample:
        cpu = _try(self.host.cpu_percent)
        memory = _try(self.host.memory) or (None, None)
        if not self.on_tpu:
            return DeviceSample("host", cpu_percent=cpu, mem_used=memory[0], mem_total=memory[1])
        util, used, total, temp = self._sail_stats()
        if util is None:
            util = _try(self._sysfs_util)
        if temp is None:
            temp = _try(self._sysfs_temp)
        if used is None:
            used, total = _try(self._sysfs_memory) or (None, None)
        return DeviceSample(
            "tpu", util, used, total, temp, cpu_percent=cpu, mem_used=memory[0], mem_total=memory[1]
        )

    def _sail_stats(self) -> tuple[float | None, int | None, int | None, float | None]:
        sail = self._sail
        if sail is None:
            return None, None, None, None
        util = _try(lambda: float(sail.get_tpu_util(self.device_id)))
        stat = _try(lambda: list(sail.get_dev_stat(self.device_id)))  # [total MiB, used MiB, util %]
        used = total = None
        if stat and len(stat) >= 2:
            total, used = int(stat[0]) * MiB, int(stat[1]) * MiB
            if util is None and len(stat) >= 3:
                util = float(stat[2])
        temp = _try(lambda: float(sail.get_chip_temp(self.device_id)))
        return util, used, total, temp

    def _sysfs_util(self) -> float:
        for path in (
            self.sys / f"class/bm-tpu/bm-tpu{self.device_id}/device/npu_usage",
            self.sys / f"class/bm-sophon/bm-sophon{self.device_id}/device/npu_usage",
        ):
            if path.exists():
                # SoC: "usage:12 avusage:10"; the first number is the instant usage.
                return _first_number(path.read_text())
        raise FileNotFoundError("npu_usage")

    def _sysfs_temp(self) -> float:
        for path in (
            self.sys / f"class/bm-sophon/bm-sophon{self.device_id}/device/chip_temp",
            self.sys / "class/thermal/thermal_zone0/temp",
        ):
            if path.exists():
                value = _first_number(path.read_text())
                return value / 1000 if value > 1000 else value  # thermal zones report milli-degrees
        raise FileNotFoundError("temperature")

    def _sysfs_memory(self) -> tuple[int, int]:
        base = self.sys / f"class/bm-sophon/bm-sophon{self.device_id}/device"
        used = _first_number((base / "dev_mem_used").read_text())
        total = _first_number((base / "dev_mem_total").read_text())
        return int(used) * MiB, int(total) * MiB


def human_bytes(n: int | None) -> str:
    if n is None:
        return "n/a"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"  # pragma: no cover
