"""Device memory that opening a converted (or OPT-TPU) model takes, measured in the simulator, and what the compiler says it should be.

The simulator has no memory statistics (bmlib's ``bm_get_stat`` and heap queries give
zeros), so a child process runs with ``bmlib_alloc_shim.c`` preloaded, which counts the
bytes of every block bmlib hands out and takes back. Run as a script, this module is that
child: it opens the model through the bmrt backend or the real ``sophon.sail``, then
through the bare runtime several ways, and prints the counts as JSON. The reference
figures come from the compiler's own ``model_tool``.

libbmrt and sail reach libbmlib through the dynamic linker, so the preloaded counter sees
their calls; ``bmrt_lib`` calls bmlib through ctypes on the library's own handle, which
the linker does not interpose, so the child points those two functions at the counter's.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

SHIM_SOURCE = Path(__file__).with_name("bmlib_alloc_shim.c")
REPO = Path(__file__).resolve().parents[1]
ITEMSIZE = {"float16": 2, "bfloat16": 2, "float32": 4, "int32": 4}


def build_shim(out_dir: Path) -> Path:
    """The allocation counter compiled into ``out_dir`` (a C compiler is needed for sail's build anyway)."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise RuntimeError("no C compiler (cc or gcc) to build the allocation counter")
    shim = out_dir / "bmlib_alloc_shim.so"
    subprocess.run([compiler, "-shared", "-fPIC", "-O2", "-o", str(shim), str(SHIM_SOURCE), "-ldl", "-lpthread"], check=True)
    return shim


class BmodelMemory:
    """What ``model_tool`` reports for a bmodel: weights, instructions, each net's scratch and IO bytes."""

    def __init__(self, bmodel: Path, scratch: Path) -> None:
        from opt_tpu_tui import toolchain

        tool = toolchain.root()
        env = toolchain.environment(tool, scratch)

        def run(flag: str) -> str:
            command = [str(tool / "bin" / "model_tool"), flag, str(bmodel)]
            return subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout

        info = run("--info")
        sizes = re.search(r"device mem size: (\d+) \(weight: (\d+), instruct: (\d+), runtime: (\d+)\)", info)
        if sizes is None:
            raise ValueError(f"model_tool --info printed no device memory line:\n{info}")
        self.total, self.weights, self.instructions, self.largest_scratch = map(int, sizes.groups())
        # each net's activation scratch (its stage's ctx_size), in net order
        self.scratch = [int(n) for n in re.findall(r"^\s*ctx_size: (\d+),?$", run("--print"), re.MULTILINE)]
        self.io_bytes = 0  # the inputs and outputs of every net, as a per-graph allocation would hold them
        for dims, dtype in re.findall(r"^(?:input|output): [^,]+, \[([\d, ]+)\], (\w+),", info, re.MULTILINE):
            count = 1
            for d in dims.split(","):
                count *= int(d)
            self.io_bytes += count * ITEMSIZE[dtype]

    @property
    def every_net_scratch(self) -> int:
        """Weights, instructions and each net's own scratch: what bmrt allocates without BM_RUNTIME_SHARE_MEM."""
        return self.weights + self.instructions + sum(self.scratch)

    @property
    def shared_scratch(self) -> int:
        """Weights, instructions and one scratch of the largest net's size: what sharing the scratch should take."""
        return self.weights + self.instructions + max(self.scratch)


def measure(model_dir: Path, shim: Path, kind: str, sail_folder: Path | None = None) -> dict[str, int]:
    """Run this module as the child for backend ``kind``, the counter preloaded (and the built sail importable)."""
    env = dict(os.environ)
    env["LD_PRELOAD"] = str(shim)
    env["PYTHONPATH"] = os.pathsep.join([*([str(sail_folder)] if sail_folder else []), str(REPO), env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, __file__, str(model_dir), kind], env=env, capture_output=True, text=True, timeout=1200
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"the measuring child failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return json.loads(lines[-1])


class _Counter:
    """The preloaded shim's counters (the same library object LD_PRELOAD loaded)."""

    def __init__(self, shim: str) -> None:
        lib = ctypes.CDLL(shim)
        for name in ("shim_live_bytes", "shim_peak_bytes", "shim_live_blocks"):
            getattr(lib, name).restype = ctypes.c_ulonglong
        lib.shim_open_handles.restype = ctypes.c_long
        self.lib = lib

    def live(self) -> int:
        return self.lib.shim_live_bytes()

    def handles(self) -> int:
        return self.lib.shim_open_handles()

    def peak_since_reset(self) -> int:
        return self.lib.shim_peak_bytes()


def _count_bmrt_lib(shim: str) -> None:
    """Make ``bmrt_lib`` allocate and free through the counter's wrappers (they call on into libbmlib)."""
    from opt_tpu_tui.backends import bmrt_lib

    libs, counter = bmrt_lib.libraries(), ctypes.CDLL(shim)
    for name in ("bm_malloc_device_byte", "bm_free_device"):
        real, wrapper = getattr(libs.bmlib, name), getattr(counter, name)
        wrapper.argtypes, wrapper.restype = real.argtypes, real.restype
        setattr(libs.bmlib, name, wrapper)


def _child(model_dir: Path, kind: str) -> dict[str, int]:
    from opt_tpu_tui.backends import open_backend

    counter = _Counter(os.environ["LD_PRELOAD"])
    bmodel = model_dir / "model.bmodel"  # a converted model's; an OPT-TPU folder's one bmodel has its own name
    if not bmodel.is_file():
        (bmodel,) = model_dir.glob("*.bmodel")
    figures: dict[str, int] = {"start": counter.live(), "handles_start": counter.handles()}
    if kind == "bmrt":
        _count_bmrt_lib(os.environ["LD_PRELOAD"])

    backend = open_backend(model_dir, kind)
    figures["backend_open"], figures["handles_open"] = counter.live(), counter.handles()
    counter.lib.shim_reset_peak()
    backend.prefill([2, 40, 41, 42])
    for token in (43, 44):
        backend.decode(token)
    figures["peak_while_running"] = counter.peak_since_reset()
    backend.close()  # the backend object stays referenced: only close() may free the device
    figures["backend_closed"], figures["handles_closed"] = counter.live(), counter.handles()

    if kind == "bmrt":
        from opt_tpu_tui.backends.bmrt_lib import Runtime

        for label, share in (("runtime_shared", True), ("runtime_unshared", False)):
            runtime = Runtime(share_scratch=share)
            runtime.load(bmodel)
            figures[label] = counter.live()
            runtime.close()
    else:
        import sophon.sail as sail

        from opt_tpu_tui.backends.sail import SHARE_MEM

        engine = sail.EngineLLM(str(bmodel), SHARE_MEM, [0])
        figures["engine_llm_shared"] = counter.live()
        del engine
        engine = sail.Engine(0)
        assert engine.load(str(bmodel))
        figures["engine_load"] = counter.live()
        del engine
        engine = sail.Engine(str(bmodel), 0, sail.IOMode.DEVIO)
        figures["engine_devio"] = counter.live()
        del engine
    figures["end"] = counter.live()
    del backend
    return figures


if __name__ == "__main__":
    print(json.dumps(_child(Path(sys.argv[1]), sys.argv[2])), flush=True)
