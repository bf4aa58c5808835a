"""What a BM1684X box says about itself in its files: platform, chip, driver, libsophon and the TPU's memory.

Every path read here hangs off one of the roots in ``ROOTS`` (``/sys``, ``/proc`` and
libsophon's install folder), so the tests point them at directory trees shaped like a
box's. What the files look like, from libsophon's driver (``driver/bm_debug.c``,
``driver/bm_attr.c``, ``driver/CMakeLists.txt``) and SDK documents:

- PCIe host (module ``bmsophon``): ``/sys/class/bm-sophon/bm-sophon<N>``;
  ``/proc/bmsophon/{card_num,chip_num,driver_version}`` (``release version:0.5.1   release
  date: ...``); per card ``/proc/bmsophon/card<C>/{chipid,mode,...}`` (chipid ``0x1684x``
  for a BM1684X); per chip ``/proc/bmsophon/card<C>/bmsophon<N>/heap``, a line per device
  memory heap: ``heap0, size = 0x..., start_addr =0x...``.
- SoC (module ``bmtpu``): ``/sys/class/bm-tpu/bm-tpu<N>``; the driver creates only
  ``/proc/bmsophon/{card_num,chip_num}`` there. The TPU's memory is a carve-out of the
  board's RAM fixed at boot by the device tree, ``/proc/device-tree/reserved-memory/
  ion_*`` with ``compatible`` ``npu-region``, ``vpu-region`` or ``vpp-region`` and a
  ``reg`` of (address, size) as big-endian 64-bit pairs; how much is in use is in
  ``/sys/kernel/debug/ion/bm_npu_heap_dump/summary`` (``... size:N bytes, used:M bytes``),
  readable by root only. ``memory_edit.sh`` changes the carve-out.
- Either: ``/sys/module/<module>/version`` (the driver's MODULE_VERSION);
  ``/opt/sophon/libsophon-current``, a link to ``/opt/sophon/libsophon-<version>``.

Nothing here raises for a missing or unreadable file: each reader gives None and the
problem in words, which ``doctor`` prints as a line.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

LIBSOPHON_DIR = Path("/opt/sophon/libsophon-current")
Reading = Tuple[Optional[str], str]  # (the text, or None; where it came from, or why there is none)


@dataclass(frozen=True)
class Roots:
    """The folders every box fact is read under; tests replace them with temporary trees."""

    sys: Path = Path("/sys")
    proc: Path = Path("/proc")
    libsophon: Path = LIBSOPHON_DIR


ROOTS = Roots()


def roots() -> Roots:
    """The roots in force (a function, so a test's replacement of ``ROOTS`` is seen everywhere)."""
    return ROOTS


def read_text(path: Path) -> Reading:
    """The stripped text of ``path``, or None and why not, in words."""
    try:
        return path.read_text(errors="replace").strip(), str(path)
    except FileNotFoundError:
        return None, f"no {path}"
    except OSError as error:
        return None, f"{path}: {error.strerror or error}"


def platform(r: Roots | None = None) -> str:
    """"soc" (a TPU of the board's own: the bm-tpu class), "pcie" (a card: bm-sophon), else "none"."""
    r = r or roots()
    if (r.sys / "class/bm-tpu").is_dir():
        return "soc"
    if (r.sys / "class/bm-sophon").is_dir() or (r.proc / "bmsophon/card0").is_dir():
        return "pcie"
    return "none"


def devices(r: Roots | None = None) -> list[int]:
    """The TPU indices the driver made device classes for (bm-tpu<N> or bm-sophon<N>)."""
    r = r or roots()
    found = set()
    for cls in ("bm-tpu", "bm-sophon"):
        try:
            names = os.listdir(r.sys / "class" / cls)
        except OSError:
            continue
        found.update(int(m.group(1)) for m in map(re.compile(rf"{cls}(\d+)$").match, names) if m)
    return sorted(found)


CHIP_IDS = {"0x1684x": "BM1684X", "0x1686": "BM1684X", "0x1684": "BM1684", "0x1688": "BM1688"}


def chip_name(text: str) -> str | None:
    """A chip's name from a chipid (``0x1684x``) or a device-tree compatible string (``..bm1684x..``)."""
    text = text.strip().lower()
    if text in CHIP_IDS:
        return CHIP_IDS[text]
    found = re.search(r"(bm1684x|bm1684|bm1688|cv186)", text)
    return found.group(1).upper() if found else None


def _chip_dir(r: Roots, device: int) -> tuple[Path | None, Path | None]:
    """The PCIe proc folders of ``device``: its card's and its own (``card<C>/bmsophon<N>``)."""
    for card in sorted((r.proc / "bmsophon").glob("card*")):
        mine = card / f"bmsophon{device}"
        if mine.is_dir():
            return card, mine
    return None, None


def chip(device: int = 0, r: Roots | None = None) -> Reading:
    """The chip's name: the PCIe card's chipid, or the SoC's device-tree compatible string."""
    r = r or roots()
    card, _ = _chip_dir(r, device)
    problems = []
    for path in ([card / "chipid"] if card else []) + [r.proc / "device-tree/compatible"]:
        text, where = read_text(path)
        if text is None:
            problems.append(where)
            continue
        name = chip_name(text.replace("\0", " "))
        if name:
            return name, where
        problems.append(f"{path}: {text.replace(chr(0), ' ')!r} names no Sophgo chip")
    return None, "; ".join(problems)


def driver_version(r: Roots | None = None) -> Reading:
    """The TPU driver's version: /proc/bmsophon/driver_version (PCIe), else the kernel module's."""
    r = r or roots()
    text, where = read_text(r.proc / "bmsophon/driver_version")
    problems = []
    if text is not None:
        found = re.search(r"(\d+\.\d+\.\d+)", text)
        if found:
            return found.group(1), where
        problems.append(f"{where}: {text!r} holds no version")
    else:
        problems.append(where)
    for module in ("bmsophon", "bmtpu"):
        text, where = read_text(r.sys / "module" / module / "version")
        if text:
            return text, where
        problems.append(where)
    return None, "; ".join(problems)


def version_tuple(text: str | None) -> tuple[int, ...] | None:
    """(0, 5, 1) from "0.5.1" (or from a folder name ending so); None if there is none."""
    found = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", text or "")
    return tuple(int(g or 0) for g in found.groups()) if found else None


@dataclass(frozen=True)
class Libsophon:
    """libsophon's install: where it is, its version, and whether the runtime library is there."""

    path: Path | None
    version: str | None
    has_runtime: bool
    problem: str  # why something is missing, in words; "" when all is there


def libsophon(r: Roots | None = None) -> Libsophon:
    """libsophon-current, resolved: its version is the target folder's name (``libsophon-0.5.1``)."""
    r = r or roots()
    base = r.libsophon
    if not base.exists():
        return Libsophon(None, None, False, f"no {base}")
    try:
        real = base.resolve()
    except (OSError, RuntimeError) as error:
        return Libsophon(None, None, False, f"{base}: {error}")
    found = re.search(r"(\d+\.\d+\.\d+)", real.name)
    has_runtime = (real / "lib/libbmrt.so").exists() and (real / "lib/libbmlib.so.0").exists()
    problems = [] if found else [f"{real.name}: the folder's name holds no version"]
    if not has_runtime:
        problems.append(f"no lib/libbmrt.so and lib/libbmlib.so.0 in {real}")
    return Libsophon(real, found.group(1) if found else None, has_runtime, "; ".join(problems))


@dataclass(frozen=True)
class Heap:
    """A device memory heap: its name (npu, vpu, vpp or heapN), size and, where told, bytes in use."""

    name: str
    size: int
    used: int | None = None


def pcie_heaps(device: int = 0, r: Roots | None = None) -> tuple[list[Heap], str]:
    """The heaps of a PCIe chip from ``card<C>/bmsophon<N>/heap``."""
    r = r or roots()
    _, mine = _chip_dir(r, device)
    if mine is None:
        return [], f"no {r.proc / 'bmsophon'}/card*/bmsophon{device}"
    text, where = read_text(mine / "heap")
    if text is None:
        return [], where
    heaps = [
        Heap(f"heap{m.group(1)}", int(m.group(2), 16))
        for m in re.finditer(r"heap(\d+)\s*,\s*size\s*=\s*0x([0-9a-fA-F]+)", text)
    ]
    return [h for h in heaps if h.size > 0], where if heaps else f"{where}: no heap lines in {text[:80]!r}"


SOC_REGIONS = {"npu-region": "npu", "vpu-region": "vpu", "vpp-region": "vpp"}


def soc_heaps(r: Roots | None = None) -> tuple[list[Heap], str]:
    """The SoC's TPU, VPU and VPP carve-outs from the device tree, with the npu heap's use where readable."""
    r = r or roots()
    reserved = r.proc / "device-tree/reserved-memory"
    try:
        nodes = sorted(reserved.iterdir())
    except OSError as error:
        return [], f"{reserved}: {error.strerror or error}"
    heaps = []
    for node in nodes:
        compatible, _ = read_text(node / "compatible")
        name = SOC_REGIONS.get((compatible or "").strip("\0 "))
        if name is None:
            continue
        try:
            reg = (node / "reg").read_bytes()
        except OSError:
            continue
        if len(reg) >= 16:  # #address-cells = #size-cells = 2: a 64-bit address, then a 64-bit size
            used = heap_used(r, name)
            heaps.append(Heap(name, int.from_bytes(reg[8:16], "big"), used))
    return heaps, str(reserved) if heaps else f"{reserved}: no npu/vpu/vpp regions"


def heap_used(r: Roots, name: str) -> int | None:
    """Bytes in use in a SoC heap from ion's debugfs summary (root only); None where it cannot be read."""
    text, _ = read_text(r.sys / f"kernel/debug/ion/bm_{name}_heap_dump/summary")
    found = re.search(r"used:\s*(\d+)", text or "")
    return int(found.group(1)) if found else None


def open_file_limit() -> tuple[int | None, int | None]:
    """(soft, hard) RLIMIT_NOFILE; None for unlimited; (None, None) where there is no such limit."""
    try:
        import resource
    except ImportError:
        return None, None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    unlimited = resource.RLIM_INFINITY
    return (None if soft == unlimited else soft), (None if hard == unlimited else hard)


def raise_open_file_limit(need: int) -> bool:
    """Whether this process may open ``need`` files, after raising its soft limit toward ``need`` (as far as
    the hard limit allows: any process may); True where there is no such limit."""
    try:
        import resource
    except ImportError:
        return True
    soft, hard = open_file_limit()
    if soft is None or soft >= need:
        return True
    raised = need if hard is None else min(hard, need)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (raised, resource.RLIM_INFINITY if hard is None else hard))
    except (ValueError, OSError):
        return False
    return raised >= need


def open_files() -> int:
    """Files this process holds open now (256 where /proc/self/fd cannot be listed)."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 256
