"""``opt-tpu-tui doctor``: what the box has, what the model needs, what is wrong and how to fix it.

Made for the first meeting of a model and a real BM1684X that nobody here has seen: most
failures there are version mismatches (libsophon, driver, sail, the bmodel's compiler) and
device memory. The report reads files (``box``), the bmodel's header (``bmodel_info``) and
libsophon's own library (``bmrt_lib.DeviceStats``); it downloads nothing and changes
nothing (the tpu-mlir simulator is only looked for, never fetched). A source that is
missing or unreadable is a line saying so. Each check is a line with a mark, and a failing
one has its fix on the next line; the exit status is 1 when one fails. ``--json`` prints
the same as one object for a bug report; ``--run`` also loads the model and decodes a few
greedy tokens, timed, compared with the CPU backend's where a checkpoint is at hand.
"""

from __future__ import annotations

import argparse
import json
import math
import platform as host_platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from opt_tpu_tui import __version__, box, converted, original_layout, paths
from opt_tpu_tui.bmodel_info import BmodelInfo, read_bmodel_or_none
from opt_tpu_tui.backends.sail import INSTALL_COMMAND as SAIL_INSTALL
from opt_tpu_tui.backends.sail import files_needed
from opt_tpu_tui.errors import UserError

ENGINE_LLM_LIBSOPHON = (0, 5, 0)  # sail.EngineLLM, and bmodels of current tpu-mlir, need libsophon 0.5.0 or newer
RUN_PROMPT = "Hello, my name is"
RUN_TOKENS = 8
PACKAGES = ("numpy", "tokenizers", "safetensors", "platformdirs", "textual")
MiB = 2**20
MARKS = {True: "ok  ", False: "FAIL", None: "info"}


@dataclass
class Check:
    """One verdict: ``ok`` True (passes), False (fails: ``fix`` says what to do) or None (for information)."""

    name: str
    ok: Optional[bool]
    detail: str
    fix: str = ""


@dataclass
class Report:
    box: Dict[str, Any] = field(default_factory=dict)
    model: Dict[str, Any] = field(default_factory=dict)
    checks: List[Check] = field(default_factory=list)
    run: Dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return any(check.ok is False for check in self.checks)

    def to_json(self) -> str:
        raw = {"opt_tpu_tui": __version__, "box": self.box, "model": self.model,
               "checks": [asdict(c) for c in self.checks], "run": self.run}  # fmt: skip
        return json.dumps(raw, indent=2, default=str)


# -- what is there ----------------------------------------------------------------------------------------------


def mib(n: int | None) -> str:
    """Bytes as MiB or GiB, and exactly where small (a test model's few hundred KB)."""
    if n is None:
        return "unknown"
    if n < 16 * MiB:
        return f"{n:,} bytes"
    return f"{n / MiB:,.1f} MiB" if n < 4096 * MiB else f"{n / 2**30:,.2f} GiB"


def simulator_dir() -> tuple[Path | None, str]:
    """tpu-mlir's unpacked folder (its runtime runs bmodels in the simulator), only looked for, never fetched."""
    from opt_tpu_tui import toolchain

    try:
        return toolchain.root(), ""
    except UserError as error:
        return None, str(error)


def runtime_dir(r: box.Roots) -> tuple[Path | None, str]:
    """The folder ``--backend bmrt`` loads libbmrt from: the override, libsophon, else the simulator's."""
    from opt_tpu_tui.backends import bmrt_lib

    import os

    if os.environ.get(bmrt_lib.LIB_ENV):
        return Path(os.environ[bmrt_lib.LIB_ENV]), f"{bmrt_lib.LIB_ENV}"
    lib = r.libsophon / "lib"
    if (lib / "libbmrt.so").exists():
        return lib, "libsophon"
    folder, problem = simulator_dir()
    return (folder / "lib", "the tpu-mlir simulator") if folder else (None, problem)


def sail_facts() -> dict[str, Any]:
    """sophon-sail: importable or not, its version, file, EngineLLM, and the libbmrt it loaded (from /proc/self/maps)."""
    try:
        import sophon.sail as sail  # type: ignore[import-not-found]
    except Exception as error:  # noqa: BLE001 - ImportError, or a binding that fails to load its libraries
        return {"installed": False, "problem": f"not importable ({type(error).__name__}: {error})"}
    facts: dict[str, Any] = {
        "installed": True, "version": str(getattr(sail, "__version__", "unknown")),
        "path": str(getattr(sail, "__file__", "")), "engine_llm": hasattr(sail, "EngineLLM"),
    }  # fmt: skip
    try:
        maps = Path("/proc/self/maps").read_text()
        loaded = sorted({line.split()[-1] for line in maps.splitlines() if "/libbmrt.so" in line})
        facts["libbmrt"] = loaded[0] if loaded else "not loaded"
    except OSError as error:
        facts["libbmrt"] = f"unknown (/proc/self/maps: {error.strerror})"
    return facts


def package_versions() -> dict[str, str]:
    try:
        from importlib.metadata import PackageNotFoundError, version
    except ImportError:  # pragma: no cover - Python 3.7
        return {}
    found = {}
    for name in PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def device_memory(kind: str, device: int, r: box.Roots, lib_dir: Path | None) -> dict[str, Any]:
    """The TPU's memory: total, used and free bytes where known, their source, and the heaps.

    libbmlib first (its byte counts per heap, else ``bm_get_stat``); then the files:
    a PCIe chip's ``heap`` file (sizes), a SoC's device-tree carve-outs (sizes; use from
    ion's debugfs, root only).
    """
    memory: dict[str, Any] = {"total": None, "used": None, "free": None, "heaps": [], "source": "", "problems": []}
    if lib_dir is not None:
        try:
            from opt_tpu_tui.backends.bmrt_lib import DeviceStats
            from opt_tpu_tui.native_output import native_stdout_to

            with native_stdout_to(paths.native_output_log(), append=True):
                stats = DeviceStats(device, lib_dir)
                reading, heaps = stats.memory(), stats.heaps()
                memory["lib_chip"], memory["lib_driver"] = stats.chip(), stats.driver_version()
            if reading is not None:
                memory.update(used=reading[0], total=reading[1], free=reading[1] - reading[0], source="libbmlib")
                memory["heaps"] = [{"name": f"heap{i}", "size": t, "used": u} for i, t, u in heaps or []]
            else:
                memory["problems"].append(
                    "libbmlib gives no memory figures (zeros: the simulator keeps no statistics)" if kind == "simulator"
                    else "libbmlib's bm_get_stat and heap statistics give none"
                )  # fmt: skip
        except Exception as error:  # noqa: BLE001 - a library that will not load or a device that will not open
            memory["problems"].append(f"libbmlib: {error}")
    if kind == "pcie" and not memory["heaps"]:
        heaps, where = box.pcie_heaps(device, r)
        memory["heaps"] = [asdict(h) for h in heaps]
        if heaps and memory["total"] is None:
            memory.update(total=sum(h.size for h in heaps), source=where)
        elif not heaps:
            memory["problems"].append(where)
    if kind == "soc":
        heaps, where = box.soc_heaps(r)
        if heaps:
            memory["heaps"] = [asdict(h) for h in heaps]
            if memory["total"] is None:
                memory.update(total=sum(h.size for h in heaps), source=where)
                if all(h.used is not None for h in heaps):
                    used = sum(h.used or 0 for h in heaps)
                    memory.update(used=used, free=memory["total"] - used)
                else:
                    memory["problems"].append("how much is in use needs root (ion's debugfs); free is unknown")
        else:
            memory["problems"].append(where)
    return memory


def gather_box(device: int = 0, r: box.Roots | None = None) -> dict[str, Any]:
    """Everything ``doctor`` says about the machine, as plain values (the JSON report's ``box``)."""
    r = r or box.roots()
    kind = box.platform(r)
    libsophon = box.libsophon(r)
    simulator, simulator_problem = simulator_dir()
    if kind == "none" and simulator is not None and not libsophon.has_runtime:
        kind = "simulator"
    lib_dir, lib_source = runtime_dir(r)
    chip, chip_source = box.chip(device, r)
    if chip is None and kind == "simulator":
        chip, chip_source = "BM1684X", "the tpu-mlir simulator (libcmodel_bm1684x)"
    driver, driver_source = box.driver_version(r)
    soft, hard = box.open_file_limit()
    facts: dict[str, Any] = {
        "platform": kind, "machine": host_platform.machine(), "device": device, "devices": box.devices(r),
        "chip": chip, "chip_source": chip_source,
        "libsophon": {"path": str(libsophon.path) if libsophon.path else None, "version": libsophon.version,
                      "runtime": libsophon.has_runtime, "problem": libsophon.problem},
        "simulator": {"path": str(simulator) if simulator else None, "problem": simulator_problem},
        "runtime": {"path": str(lib_dir) if lib_dir else None, "source": lib_source},
        "driver": {"version": driver, "source": driver_source},
        "sail": sail_facts(),
        "open_files": {"soft": soft, "hard": hard, "in_use": box.open_files()},
        "python": {"version": host_platform.python_version(), "executable": sys.executable},
        "packages": package_versions(),
    }  # fmt: skip
    facts["memory"] = device_memory(kind, device, r, lib_dir)
    if facts["chip"] is None and facts["memory"].get("lib_chip"):
        facts["chip"], facts["chip_source"] = facts["memory"]["lib_chip"], "libbmlib bm_get_chipid"
    if driver is None and facts["memory"].get("lib_driver"):
        facts["driver"] = {"version": facts["memory"]["lib_driver"], "source": "libbmlib bm_get_driver_version"}
    return facts


# -- what the model needs ---------------------------------------------------------------------------------------


def converted_buffers(manifest: converted.Manifest) -> int:
    """Device bytes ``backends.tpu.TPUBackend`` allocates itself (its ``_allocate``): KV cache, hidden, masks, logits."""
    cfg, c, t, item = manifest.config, manifest.context, manifest.chunk, 2  # 16-bit activations
    kv = 2 * cfg.num_hidden_layers * c * cfg.hidden_size * item
    hidden = 2 * t * cfg.hidden_size * item + cfg.hidden_size * item  # two chunks ping-pong, the decode token
    masks = t * (c + t) * item + sum((w + 1) * item for w in manifest.windows)
    return kv + hidden + masks + cfg.vocab_size * item


def original_buffers(sizes: original_layout.Sizes) -> int:
    """Device bytes ``backends.original.OriginalBackend`` allocates itself (its ``_allocate``), all 4-byte items."""
    s, h, kv = sizes.seq, sizes.hidden, sizes.heads * sizes.seq * sizes.head_dim
    kv1 = sizes.heads * (s + 1) * sizes.head_dim
    return 4 * (2 * sizes.layers * kv + 2 * kv1 + 2 * s * h + 2 * s + 2 + s * s + (s + 1) + 1)


def model_needs(model_dir: Path) -> dict[str, Any]:
    """What the model in ``model_dir`` is and needs: chip, compiler, device memory, handles, context, precision."""
    needs: dict[str, Any] = {"path": str(model_dir)}
    if not model_dir.is_dir():
        needs.update(kind="missing", problem=f"{model_dir}: no such model directory")
        return needs
    if converted.is_converted(model_dir):
        needs["kind"] = "converted"
        try:
            manifest = converted.Manifest.load(model_dir)
        except UserError as error:
            needs["problem"] = str(error)
            return needs
        bmodel = model_dir / converted.BMODEL
        needs.update(context=manifest.context, precision=converted.quantization(manifest.mode, manifest.activations),
                     weights=manifest.mode, source=manifest.source, buffers=converted_buffers(manifest))  # fmt: skip
    elif original_layout.is_original(model_dir):
        needs["kind"] = "original"
        try:
            bmodel = original_layout.find_bmodel(model_dir)
        except UserError as error:
            needs["problem"] = str(error)
            return needs
        needs["weights"] = {"int8": "int8", "int4": "int4"}.get(bmodel.stem.rsplit("_", 1)[-1], "f16")
        needs["precision"] = {"f16": "F16", "int8": "W8F16", "int4": "W4F16"}[needs["weights"]]
    else:
        needs["kind"] = "checkpoint"
        needs["note"] = "a Hugging Face checkpoint: the CPU backend runs it, no TPU needed"
        return needs
    needs["bmodel"] = str(bmodel)
    info, problem = read_bmodel_or_none(bmodel)
    if info is None:
        needs["problem"] = f"{bmodel}: cannot read its header ({problem})"
        return needs
    if needs["kind"] == "original":
        try:
            sizes = original_layout.Sizes.from_nets(set(info.nets), info.net_io, bmodel)
        except UserError as error:
            needs["problem"] = str(error)
            return needs
        needs.update(context=sizes.seq, buffers=original_buffers(sizes))
    describe_bmodel(needs, info)
    return needs


def describe_bmodel(needs: dict[str, Any], info: BmodelInfo) -> None:
    """The bmodel's part of ``needs``: chip, compiler, nets and the device memory it takes with the buffers."""
    from opt_tpu_tui.backends.sail import FILES_PER_HANDLE

    needs.update(
        chip=info.chip, compiler=info.version, tpu_mlir=info.tpu_mlir_version, compiled=info.created.strip(),
        nets=len(info.nets), weights_bytes=info.weights, instructions=info.instructions,
        scratch=info.largest_scratch, every_scratch=info.every_scratch,
        device_memory=info.device_bytes(True) + needs["buffers"],
        device_memory_unshared=info.device_bytes(False) + needs["buffers"],
        handles=info.graph_io + 2, files_per_handle=FILES_PER_HANDLE,
    )  # fmt: skip


# -- checks -----------------------------------------------------------------------------------------------------


def check_chip(facts: dict[str, Any], needs: dict[str, Any]) -> Check:
    want, have = needs.get("chip"), facts.get("chip")
    if have is None:
        return Check("chip", None, f"the model is for {want}; this machine's chip is unknown ({facts['chip_source']})")
    if want.upper() != have.upper():
        return Check("chip", False, f"the model is compiled for {want}, this machine has a {have}",
                     f"use a {want} box, or convert the checkpoint for the {have} with its own tpu-mlir "
                     "(opt-tpu-tui converts for the BM1684X only); --backend cpu runs the checkpoint meanwhile")  # fmt: skip
    return Check("chip", True, f"the model is for {want}, this machine has a {have}")


def check_libsophon(facts: dict[str, Any]) -> Check:
    """libsophon new enough for EngineLLM (and current bmodels), and the driver from the same release."""
    kind, lib, driver = facts["platform"], facts["libsophon"], facts["driver"]["version"]
    if kind == "simulator":
        return Check("libsophon", True, f"the tpu-mlir simulator's runtime ({facts['runtime']['path']}) stands in for it")
    if not lib["runtime"]:
        return Check("libsophon", False, f"not installed: {lib['problem']}",
                     "install libsophon from Sophgo's SDK (V24.04.01 or newer; sophon-libsophon and sophon-driver "
                     "packages on a PCIe host, included in a SoC's system image)")  # fmt: skip
    version = box.version_tuple(lib["version"])
    if version is None:
        return Check("libsophon", None, f"{lib['path']}: its version cannot be told ({lib['problem']})")
    need = ".".join(map(str, ENGINE_LLM_LIBSOPHON))
    if version < ENGINE_LLM_LIBSOPHON:
        return Check("libsophon", False,
                     f"{lib['version']} is older than {need}, which sail's EngineLLM and current bmodels need "
                     "(older ones fail with \"gdma dst shouldn't be coeff\")",
                     f"upgrade libsophon and the driver to {need} or newer (Sophgo SDK V24.04.01 or newer; on a SoC, "
                     "flash the SDK's system image)")  # fmt: skip
    if driver and box.version_tuple(driver) != version:
        return Check("libsophon", False, f"libsophon {lib['version']} with driver {driver}: from different releases",
                     f"install the driver of libsophon {lib['version']}'s release (sophon-driver {lib['version']}), "
                     "then reboot or reload the module")  # fmt: skip
    return Check("libsophon", True, f"{lib['version']} (>= {need})" + (f", driver {driver}" if driver else ""))


def check_memory(facts: dict[str, Any], needs: dict[str, Any]) -> Check:
    need, memory = needs["device_memory"], facts["memory"]
    if facts["platform"] == "simulator":
        return Check("device memory", None, f"the model needs {mib(need)}; the simulator takes it from the host's RAM")
    free, total = memory["free"], memory["total"]
    have, word = (free, "free") if free is not None else (total, "in all (free unknown)")
    if have is None:
        return Check("device memory", None, f"the model needs {mib(need)}; the TPU's memory is unknown "
                                            f"({'; '.join(memory['problems'])})")  # fmt: skip
    if need <= have:
        return Check("device memory", True, f"the model needs {mib(need)}, the TPU has {mib(have)} {word}")
    return Check("device memory", False, f"the model needs {mib(need)}, the TPU has {mib(have)} {word}",
                 memory_fix(facts, need, have))


def memory_fix(facts: dict[str, Any], need: int, have: int) -> str:
    """The fix for too little device memory: on a SoC, memory_edit.sh with sizes; on a card, free it or shrink the model."""
    smaller = "or convert the model smaller (--mode int4, a shorter --context)"
    if facts["platform"] != "soc":
        return f"free {mib(need - have)} of device memory (bm-smi lists the processes holding it), {smaller}"
    heaps = {h["name"]: h["size"] for h in facts["memory"]["heaps"]}
    short = need - have
    npu = math.ceil((heaps.get("npu", 0) + short + 64 * MiB) / (256 * MiB)) * 256  # MiB, with room, whole 256s
    vpu, vpp = heaps.get("vpu", 0) // MiB, heaps.get("vpp", 0) // MiB
    return (f"enlarge the TPU's heap: `sudo memory_edit.sh -c -npu {npu} -vpu {vpu} -vpp {vpp}` (`memory_edit.sh -p` "
            f"prints the layout), then `sudo cp emmcboot.itb /boot/ && sync && sudo reboot`; {smaller}")  # fmt: skip


def check_open_files(facts: dict[str, Any], needs: dict[str, Any]) -> Check:
    """Whether the open-file limit holds the device handles sail's EngineLLM opens (the sail backend raises the soft one)."""
    handles, per = needs["handles"], needs["files_per_handle"]
    limit = facts["open_files"]
    need = files_needed(handles, limit["in_use"])
    soft, hard = limit["soft"], limit["hard"]
    detail = f"sail's EngineLLM opens {handles} device handles (up to {per * handles} files); limit soft {soft or 'unlimited'}, hard {hard or 'unlimited'}"
    if not facts["sail"]["installed"]:
        return Check("open files", None, detail.split(";")[0] + " with sail; the bmrt backend opens one")
    if hard is None or hard >= need:
        raised = "" if soft is None or soft >= need else f"; the sail backend raises the soft limit to {need} itself"
        return Check("open files", True, detail + raised)
    extra = needs["device_memory_unshared"] - needs["device_memory"]
    return Check("open files", False, f"{detail}: {need} needed",
                 f"raise the hard limit to {need} (`ulimit -Hn {need}` in a root shell, or `* hard nofile {need}` in "
                 f"/etc/security/limits.conf, then log in again); else the sail backend falls back to sail.Engine, "
                 f"every graph with its own scratch: {mib(extra)} more device memory")  # fmt: skip


def check_compiler(facts: dict[str, Any], needs: dict[str, Any]) -> Check:
    """The bmodel's tpu-mlir against the runtime's: equal in the simulator; on a box, said for the record."""
    from opt_tpu_tui import toolchain

    made = needs.get("tpu_mlir") or needs.get("compiler")
    if facts["platform"] == "simulator":
        if needs.get("tpu_mlir") == toolchain.VERSION:
            return Check("compiler", True, f"compiled by tpu-mlir {made}, the simulator's own")
        return Check("compiler", None, f"compiled by tpu-mlir {made}; the simulator is tpu-mlir {toolchain.VERSION}")
    lib = facts["libsophon"]["version"] or "unknown"
    return Check("compiler", None, f"compiled by tpu-mlir {made} ({needs.get('compiled')}); the runtime is libsophon {lib}")


def check_backend(facts: dict[str, Any], needs: dict[str, Any]) -> Check:
    """Which backend ``--backend auto`` picks for the model, and why (``backends.pick_backend``'s rule)."""
    if needs["kind"] == "checkpoint":
        return Check("backend", None, "auto picks cpu: a Hugging Face checkpoint")
    if facts["sail"]["installed"]:
        return Check("backend", True, "auto picks sail: sophon-sail is importable")
    if facts["libsophon"]["runtime"]:
        return Check("backend", True, f"auto picks bmrt: libsophon's libbmrt is in {facts['libsophon']['path']}; "
                                      "sophon-sail is not importable")  # fmt: skip
    if facts["platform"] == "simulator":
        return Check("backend", None, "auto refuses a bmodel here (no sail, no libsophon); --backend bmrt runs it "
                                      "in the simulator, slowly")  # fmt: skip
    return Check("backend", False, "auto finds neither sophon-sail nor libsophon for the bmodel",
                 f"install libsophon (then --backend bmrt), and sophon-sail: `{SAIL_INSTALL}`")  # fmt: skip


def checks(facts: dict[str, Any], needs: dict[str, Any]) -> list[Check]:
    found = [check_libsophon(facts)] if facts["platform"] != "none" or needs.get("chip") else []
    if needs.get("problem"):
        found.append(Check("model", False, needs["problem"], "point --model at a converted model directory, or "
                           "convert the checkpoint again with `opt-tpu-tui convert`"))  # fmt: skip
    elif needs.get("chip"):
        found += [check_chip(facts, needs), check_memory(facts, needs), check_open_files(facts, needs),
                  check_compiler(facts, needs)]  # fmt: skip
    if needs and needs.get("kind") != "missing":
        found.append(check_backend(facts, needs))
    return found


# -- --run ------------------------------------------------------------------------------------------------------


def greedy(backend: Any, ids: list[int], steps: int) -> tuple[list[int], float, float]:
    """``steps`` greedy tokens after ``ids``, the seconds to the first and the seconds of the rest."""
    import numpy as np

    from opt_tpu_tui.backends.base import emits_tokens

    pick = (lambda out: int(out)) if emits_tokens(backend) else (lambda out: int(np.argmax(out)))
    start = time.perf_counter()
    tokens = [pick(backend.prefill(ids))]
    first = time.perf_counter() - start
    start = time.perf_counter()
    while len(tokens) < steps:
        tokens.append(pick(backend.decode(tokens[-1])))
    return tokens, first, time.perf_counter() - start


def cpu_checkpoint(model_dir: Path, needs: dict[str, Any]) -> Path | None:
    """A Hugging Face checkpoint of the same model: the converted model's source beside it, or the folder itself."""
    if needs.get("kind") == "converted" and needs.get("source"):
        candidate = model_dir.resolve().parent / needs["source"]
        return candidate if (candidate / "config.json").is_file() else None
    if needs.get("kind") == "original":  # its weights, where the clone fetched them (else LFS pointers, or none)
        from opt_tpu_tui.model.checkpoint import weight_files

        try:
            weight_files(model_dir)
        except (UserError, OSError):
            return None
        return model_dir
    return None


def open_tpu(model_dir: Path, kind: str, device: int, context: int | None) -> Any:
    """The backend ``kind`` (sail or bmrt) on ``device``."""
    if kind == "sail":
        from opt_tpu_tui.backends.sail import open_sail

        return open_sail(model_dir, context, device)
    from opt_tpu_tui.backends.bmrt import open_bmrt

    return open_bmrt(model_dir, context, device)


def run_model(model_dir: Path, kind: str, device: int, needs: dict[str, Any]) -> tuple[dict[str, Any], Check]:
    """Load the model, decode RUN_TOKENS greedy tokens of RUN_PROMPT, time it, and compare with the CPU's tokens."""
    from opt_tpu_tui.native_output import native_stdout_to
    from opt_tpu_tui.tokenizer import Tokenizer

    ids = Tokenizer.from_dir(model_dir).encode(RUN_PROMPT)
    result: dict[str, Any] = {"backend": kind, "prompt": RUN_PROMPT, "prompt_tokens": len(ids)}
    with native_stdout_to(paths.native_output_log(), append=True):
        start = time.perf_counter()
        backend = open_tpu(model_dir, kind, device, None)
        result["load_seconds"] = time.perf_counter() - start
        try:
            steps = max(1, min(RUN_TOKENS, backend.context_length - len(ids)))
            tokens, first, rest = greedy(backend, ids, steps)
        finally:
            backend.close()
    result.update(tokens=tokens, first_token_seconds=first,
                  tokens_per_second=(len(tokens) - 1) / rest if rest > 0 and len(tokens) > 1 else None)  # fmt: skip
    checkpoint = cpu_checkpoint(model_dir, needs)
    if checkpoint is None:
        return result, Check("run", True, f"{len(tokens)} tokens; no CPU checkpoint beside the model to compare with")
    from opt_tpu_tui.backends.cpu import CPUBackend

    try:  # the float32 checkpoint on the box's own RAM: a 6.7B one may not fit, and the run's figures must stay
        cpu = CPUBackend(checkpoint, None)
        try:
            reference, _, _ = greedy(cpu, ids, len(tokens))
        finally:
            cpu.close()
    except MemoryError:
        return result, Check("run", None, f"{len(tokens)} tokens; the CPU checkpoint {checkpoint} does not fit in "
                                          "memory here, so they are not compared")  # fmt: skip
    result.update(cpu_checkpoint=str(checkpoint), cpu_tokens=reference)
    same = next((k for k, (a, b) in enumerate(zip(tokens, reference)) if a != b), len(tokens))
    if same == len(tokens):
        return result, Check("run", True, f"{len(tokens)} greedy tokens equal the CPU backend's on {checkpoint}")
    detail = f"token {same + 1} of {len(tokens)} differs from the CPU backend's on {checkpoint}"
    if needs.get("weights") in ("int8", "int4"):
        return result, Check("run", None, detail + " (expected now and then: the CPU runs the unquantised weights)")
    return result, Check("run", False, detail, "report it with the output of `opt-tpu-tui doctor --run --json`")


# -- the command ------------------------------------------------------------------------------------------------


def render(report: Report) -> str:
    """The report as text: what is there, what the model needs, the checks with their fixes, the run."""
    b, lines = report.box, []
    memory = b["memory"]
    platform_words = {"soc": "BM1684X SoC (the TPU's memory is a share of the board's RAM)", "pcie": "PCIe host with a card",
                      "simulator": "x86 host with tpu-mlir's BM1684X simulator", "none": "no TPU and no simulator found"}  # fmt: skip
    lib = b["libsophon"]
    sail = b["sail"]
    rows = [
        ("platform", f"{platform_words[b['platform']]} ({b['machine']}); device {b['device']}"
         + (f" of {b['devices']}" if b["devices"] else "")),
        ("chip", f"{b['chip'] or 'unknown'} ({b['chip_source']})"),
        ("libsophon", f"{lib['version'] or 'version unknown'} in {lib['path']}" if lib["path"] else lib["problem"]),
        ("runtime", f"{b['runtime']['path']} ({b['runtime']['source']})" if b["runtime"]["path"] else b["runtime"]["source"]),
        ("simulator", b["simulator"]["path"] or b["simulator"]["problem"]),
        ("driver", f"{b['driver']['version']} ({b['driver']['source']})" if b["driver"]["version"]
         else f"unknown ({b['driver']['source']})"),
        ("sophon-sail", f"{sail['version']} at {sail['path']}; EngineLLM: {'yes' if sail['engine_llm'] else 'no'}; "
         f"libbmrt: {sail['libbmrt']}" if sail["installed"] else sail["problem"]),
        ("device memory", f"{mib(memory['total'])} in all, {mib(memory['free'])} free ({memory['source']})"
         if memory["total"] is not None else "unknown"),
    ]  # fmt: skip
    rows += [("", problem) for problem in memory["problems"]]
    for heap in memory["heaps"]:
        used = "" if heap.get("used") is None else f", {mib(heap['used'])} used"
        rows.append(("  heap " + heap["name"], f"{mib(heap['size'])}{used}"))
    if b["platform"] == "soc":
        rows.append(("", "the heaps are changed with `memory_edit.sh -c -npu MiB -vpu MiB -vpp MiB` (SDK), then reboot"))
    files = b["open_files"]
    rows += [
        ("open files", f"soft {files['soft'] or 'unlimited'}, hard {files['hard'] or 'unlimited'}, {files['in_use']} in use"),
        ("python", f"{b['python']['version']} ({b['python']['executable']})"),
        ("packages", ", ".join(f"{k} {v}" for k, v in b["packages"].items())),
    ]
    lines.append("What is there")
    lines += [f"  {name:<16}{value}" for name, value in rows]
    if report.model:
        lines += ["", f"What the model needs ({report.model['path']})"]
        lines += [f"  {name:<16}{value}" for name, value in model_rows(report.model)]
    if report.run:
        r = report.run
        lines += ["", f"Run ({r['backend']}, {r['prompt_tokens']} prompt tokens)"]
        tps = "n/a" if r["tokens_per_second"] is None else f"{r['tokens_per_second']:.2f}"
        lines.append(f"  load {r['load_seconds']:.2f} s, first token {r['first_token_seconds']:.2f} s, {tps} tok/s")
        lines.append(f"  tokens        {r['tokens']}" + (f"\n  cpu tokens    {r['cpu_tokens']}" if "cpu_tokens" in r else ""))
    lines += ["", "Checks"]
    for check in report.checks:
        lines.append(f"  [{MARKS[check.ok]}] {check.name}: {check.detail}")
        if check.ok is False and check.fix:
            lines.append(f"         fix: {check.fix}")
    return "\n".join(lines) + "\n"


def model_rows(needs: dict[str, Any]) -> list[tuple[str, str]]:
    rows = [("kind", needs.get("kind", "?"))]
    if "problem" in needs:
        return rows + [("problem", needs["problem"])]
    if "note" in needs:
        return rows + [("", needs["note"])]
    rows += [
        ("chip", needs["chip"]),
        ("compiled by", f"tpu-mlir {needs.get('tpu_mlir') or '?'} ({needs['compiler']}, {needs['compiled']})"),
        ("context", f"{needs['context']} tokens, precision {needs['precision']}"),
        ("device memory", f"{mib(needs['device_memory'])}: weights {mib(needs['weights_bytes'])}, instructions "
         f"{mib(needs['instructions'])}, scratch {mib(needs['scratch'])} (shared), KV cache and buffers "
         f"{mib(needs['buffers'])}"),
        ("", f"{mib(needs['device_memory_unshared'])} where the graphs cannot share their scratch (sail.Engine)"),
        ("device handles", f"{needs['handles']} with sail's EngineLLM ({needs['files_per_handle']} open files each "
         "on a SoC), 1 with bmrt"),
    ]  # fmt: skip
    return rows


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="opt-tpu-tui doctor",
        description="Say what this machine has for the TPU, what a model needs, and what is wrong, with a fix for "
        "each failing check; exit 1 if one fails. Nothing is downloaded or changed.",
    )
    parser.add_argument("--model", metavar="DIR", type=Path, help="the model to judge (default: the last one used)")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object, for a bug report")
    parser.add_argument("--run", action="store_true", help="also load the model and time a few greedy tokens, "
                        "compared with the CPU backend's where its checkpoint is beside it")  # fmt: skip
    parser.add_argument("--device", metavar="N", type=int, default=0, help="the TPU to look at (default: 0)")
    parser.add_argument("--backend", choices=("auto", "bmrt", "sail"), default="auto",
                        help="with --run: the backend (default: what auto picks; bmrt in the simulator)")  # fmt: skip
    return parser


def default_model() -> Path | None:
    from opt_tpu_tui.config import load_settings

    try:
        settings, _ = load_settings()
    except UserError:
        return None
    return Path(settings.last_model) if settings.last_model else None


def run_kind(kind: str, facts: dict[str, Any]) -> str:
    if kind != "auto":
        return kind
    return "sail" if facts["sail"]["installed"] else "bmrt"


def run_doctor(argv: list[str]) -> int:
    """``opt-tpu-tui doctor``: print the report; 0 when every check passes, 1 when one fails."""
    args = build_parser().parse_args(argv)
    if args.device < 0:
        raise UserError(f"--device {args.device}: a device index is 0 or more")
    report = Report(box=gather_box(args.device))
    model_dir = args.model if args.model is not None else default_model()
    if model_dir is not None:
        report.model = model_needs(model_dir)
    report.checks = checks(report.box, report.model)
    if args.run:
        if not report.model or report.model.get("kind") not in ("converted", "original") or "problem" in report.model:
            report.checks.append(Check("run", False, "--run needs a converted or OPT-TPU model (--model DIR)",
                                       "give --model the folder `opt-tpu-tui convert` wrote"))  # fmt: skip
        else:
            try:
                report.run, check = run_model(model_dir, run_kind(args.backend, report.box), args.device, report.model)
            except (UserError, RuntimeError, OSError) as error:
                check = Check("run", False, f"loading or running the model failed: {error}",
                              "see the checks above; the runtime's own messages are in "
                              f"{paths.native_output_log()}")  # fmt: skip
            report.checks.append(check)
    sys.stdout.write(report.to_json() + "\n" if args.json else render(report))
    return 1 if report.failed else 0
