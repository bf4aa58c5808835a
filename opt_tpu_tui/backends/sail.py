"""``--backend sail``: the TPU backend through Sophgo's Python binding, ``sophon.sail``.

sophon-sail is not on PyPI; on a box it comes with Sophgo's SDK, so it is imported only
here, when this backend is chosen. An ``EngineLLM`` (or an ``Engine``) runs each net on
``sail.Tensor`` objects in device memory, and the KV cache slots are zero-copy views
(``sail.Tensor(src, shape, offset, True)``), so the shared logic in ``backends.tpu``
works unchanged.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from opt_tpu_tui import box, original_layout
from opt_tpu_tui.backends.base import Backend
from opt_tpu_tui.backends.original import OriginalBackend
from opt_tpu_tui.backends.original import graph_io as original_graph_io
from opt_tpu_tui.backends.tpu import TPUBackend, expected_io, top1_io
from opt_tpu_tui.converted import Manifest
from opt_tpu_tui.errors import UserError

INSTALL_COMMAND = "python3 -m pip install --user dfss && python3 -m dfss --install sail"  # Sophgo's wheel for this Python
INSTALL_HINT = (
    "sophon-sail is not installed (it is not on PyPI: install the wheel from Sophgo's SDK that matches the "
    f"box's libsophon, or `{INSTALL_COMMAND}`); or use --backend bmrt"
)


def import_sail() -> ModuleType:
    try:
        import sophon.sail as sail
    except ImportError:
        raise UserError(INSTALL_HINT) from None
    return sail


def sail_available() -> bool:
    try:
        import_sail()
    except UserError:
        return False
    return True


# bm_runtime_flag_t's BM_RUNTIME_SHARE_MEM (libsophon's bmdef.h): the nets share one activation scratch
SHARE_MEM = 1 << 0
# files a bmlib device handle keeps open on a box: /dev/bm-sophonN, and /dev/ion too on a SoC (bmlib_runtime.cpp)
FILES_PER_HANDLE = 2


def room_for_handles(handles: int) -> bool:
    """Whether ``handles`` more device handles fit under the open-file limit, raising the soft limit if need be.

    EngineLLM opens a device handle (``sail::Handle``, so ``bm_dev_request``) for every
    input and every output of every graph: about 900 for OPT-6.7B at context 512, 1,100 at
    2048, past the usual soft limit of 1,024 open files. The hard limit is usually far
    higher, and raising the soft one up to it needs no privilege.
    """
    return box.raise_open_file_limit(files_needed(handles, box.open_files()))


def files_needed(handles: int, in_use: int) -> int:
    """The open-file limit EngineLLM's ``handles`` need beside the ``in_use`` files (and some room)."""
    return in_use + FILES_PER_HANDLE * handles + 64


class SailDriver:
    """``tpu.Driver`` on a ``sail.EngineLLM`` (or, without one, a ``sail.Engine``): buffers are ``sail.Tensor`` objects.

    The engine is ``EngineLLM(path, BM_RUNTIME_SHARE_MEM, [dev])`` where the binding has it
    (sophon-sail with libsophon >= 0.5, built against a bmdef.h that has
    ``bm_runtime_flag_t``). That constructor sets the flag on its bmrt instance before
    loading, so all the nets run in one activation scratch of the largest net's size
    instead of each in its own (952 MB against 15 MB for OPT-6.7B int4 at context 512);
    safe for the same reasons as in ``bmrt_lib.Runtime``: one net at a time, each launch
    waited for, and the KV cache and all inputs and outputs are tensors of our own. What
    EngineLLM offers that this needs (sophon-sail 3.10.7, src/engine_llm.cpp and
    src/bind.cpp): it allocates no per-graph tensors (its GraphLLM only wraps the bmodel's
    own IO memory, in io_alone models); ``process(graph, {index: Tensor}, {index: Tensor})``
    launches on the device memory of the tensors given (``bmrt_launch_tensor_ex`` with
    user memory, then ``bm_thread_sync``), so zero-copy views into the cache work as
    outputs; ``get_input_names`` / ``get_input_shape(graph, index)`` /
    ``get_input_dtype(graph, index)`` describe the nets. It has no ``get_handle``: its
    device handles are its own, so tensors are made on a ``sail.Handle`` of the same device
    (a ``bm_device_mem_t`` is an address on the device, usable through any of its handles;
    the sail tests run so in the simulator). Its cost is handles:
    one per input and output of every graph (``GraphLLM::init_graph_info`` makes a
    ``sail::Handle`` for each), each an open file on a box, so the soft open-file limit is
    raised to fit them (``room_for_handles``), and where the hard limit cannot, this falls
    back to ``Engine``. That has to be decided before: EngineLLM's constructor, failing
    after the bmodel is loaded, never runs its destructor, leaking the loaded weights and
    its bmrt instance.

    Without EngineLLM, or without its ``flags`` constructor, the engine is ``Engine(dev)``
    with the bmodel added by ``load``, which cannot take the flag: ``Engine`` creates its
    bmrt instance inside and exposes no ``bmrt_set_flags``, so every net keeps its own
    scratch. Never ``Engine(path, dev, IOMode.DEVIO)``: that also allocates device memory
    for the inputs and outputs of every graph, which this backend never uses (it brings its
    own tensors): about 3x the KV cache for OPT-6.7B at context 512 with its decode
    windows.

    What the real binding does that shapes this code: ``asnumpy()`` of a BM_FLOAT16 /
    BM_BFLOAT16 tensor gives their bits as uint16, and ``update_data`` takes them so, in
    the tensor's exact shape; ``sync_d2s`` of a tensor without host memory silently does
    nothing (and ``asnumpy`` then gives zeros); every tensor holds the device handle, so the
    device is released only when the engine, the handle and all tensors are gone.
    """

    def __init__(self, bmodel: Path, device: int = 0, share_scratch: bool = True, graph_io: int = 0) -> None:
        """``graph_io``: how many inputs and outputs the bmodel's graphs have in all (EngineLLM's handle count)."""
        sail = self.sail = import_sail()
        self.engine: Any = None
        self.shares_scratch = False
        if share_scratch and hasattr(sail, "EngineLLM") and room_for_handles(graph_io + 2):
            self.handle = sail.Handle(device)
            try:
                self.engine = sail.EngineLLM(str(bmodel), SHARE_MEM, [device])
                self.shares_scratch = True
            except TypeError:  # a binding built without bmrt flags: only EngineLLM(path, [dev])
                self.handle = None
            except Exception as error:  # SailEngineError: it could not load the bmodel
                self.close()
                raise UserError(f"{bmodel}: sail could not load it (not a bmodel, or one for another chip): {error}") from None
        if self.engine is None:
            self.engine = sail.Engine(device)  # a bmrt instance on the device: no graphs, no tensors yet
            self.handle = self.engine.get_handle()
            if not self.engine.load(str(bmodel)):
                self.close()
                raise UserError(f"{bmodel}: sail could not load it (not a bmodel, or one for another chip)")
        self.dtypes = {sail.Dtype.BM_FLOAT16: "float16", sail.Dtype.BM_BFLOAT16: "bfloat16", sail.Dtype.BM_FLOAT32: "float32",
                       sail.Dtype.BM_INT32: "int32"}  # fmt: skip
        self.codes = {name: code for code, name in self.dtypes.items()}
        self.graphs = set(self.engine.get_graph_names())
        self.names: dict[str, tuple[list[Any], list[Any]]] = {}

    def io(self, net: str) -> tuple[list[tuple[tuple[int, ...], str]], list[tuple[tuple[int, ...], str]]]:
        if net not in self.graphs:
            raise UserError(f"the loaded bmodel has no net named {net!r}")
        e = self.engine
        ins, outs = e.get_input_names(net), e.get_output_names(net)
        if self.shares_scratch:  # EngineLLM: tensors by index, in the names' order
            ins, outs = list(range(len(ins))), list(range(len(outs)))
        self.names[net] = (ins, outs)
        return (
            [(tuple(e.get_input_shape(net, n)), self.dtypes.get(e.get_input_dtype(net, n), "other")) for n in ins],
            [(tuple(e.get_output_shape(net, n)), self.dtypes.get(e.get_output_dtype(net, n), "other")) for n in outs],
        )

    def net_names(self) -> list[str]:
        return sorted(self.graphs)

    def stages(self, net: str) -> list[tuple[list[tuple[int, ...]], list[tuple[int, ...]]]] | None:
        """Every stage's shapes from EngineLLM; an ``Engine`` tells one shape per tensor only, so None."""
        ins, outs = self.io(net)
        if not self.shares_scratch:
            return None
        e = self.engine
        return [
            ([tuple(e.get_input_shape(net, k, stage)) for k in range(len(ins))],
             [tuple(e.get_output_shape(net, k, stage)) for k in range(len(outs))])
            for stage in range(e.get_stage_num(net))
        ]  # fmt: skip

    def alloc(self, shape: tuple[int, ...], dtype: str, host: bool = False) -> Any:
        return self.sail.Tensor(self.handle, list(shape), self.codes[dtype], host, True)

    def view(self, buffer: Any, offset: int, shape: tuple[int, ...]) -> Any:
        return self.sail.Tensor(buffer, list(shape), offset, True)

    def upload(self, buffer: Any, array: np.ndarray) -> None:
        """16-bit data goes in as its uint16 bits, in the tensor's own shape (sail checks both); 32-bit as it is."""
        data = np.ascontiguousarray(array).reshape(buffer.shape())
        buffer.update_data(data.view(np.uint16) if data.dtype.itemsize == 2 else data)
        if buffer.is_sys_data_valid():  # update_data filled the host copy only
            buffer.sync_s2d()

    def download(self, buffer: Any, array: np.ndarray) -> None:
        if not buffer.is_sys_data_valid():  # sync_d2s would do nothing and asnumpy give zeros
            raise ValueError("only a tensor allocated with host=True can be downloaded")
        buffer.sync_d2s()
        bits = buffer.asnumpy()
        if bits.dtype.itemsize != array.dtype.itemsize:
            raise RuntimeError(f"sophon.sail gave {bits.dtype} for a tensor of {array.dtype}; this sail is not supported")
        array.reshape(-1).view(bits.dtype)[...] = bits.reshape(-1)

    def launch(self, net: str, inputs: list[Any], outputs: list[Any]) -> None:
        ins, outs = self.names[net]
        self.engine.process(net, dict(zip(ins, inputs)), dict(zip(outs, outputs)))

    def close(self) -> None:
        """Destroy the engine and drop the handle: with the caller's tensors gone first, the device is free now."""
        self.engine = self.handle = None


def graph_io(model_dir: Path) -> int:
    """The inputs and outputs of every graph of a converted model, in all (the greedy head's counted, present or not)."""
    manifest = Manifest.load(model_dir)
    head = sum(map(len, top1_io(manifest)))
    return head + sum(len(ins) + len(outs) for ins, outs in expected_io(manifest).values())


def open_sail(model_dir: Path, context: int | None = None, device: int = 0) -> Backend:
    """A converted model directory, or one holding an OPT-TPU (original project) bmodel, run through sail."""
    if original_layout.is_original(model_dir):
        handles = original_graph_io(Path(model_dir))
        return OriginalBackend("sail", model_dir, lambda bmodel: SailDriver(bmodel, device, graph_io=handles), context)
    return TPUBackend("sail", model_dir, lambda bmodel: SailDriver(bmodel, device, graph_io=graph_io(bmodel.parent)), context)
