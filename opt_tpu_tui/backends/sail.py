"""``--backend sail``: the TPU backend through Sophgo's Python binding, ``sophon.sail``.

sophon-sail is not on PyPI; on a box it comes with Sophgo's SDK, so it is imported only
here, when this backend is chosen. An ``Engine`` runs each net on ``sail.Tensor``
objects in device memory (its DEVIO mode), and the KV cache slots are zero-copy views
(``sail.Tensor(src, shape, offset, True)``), so the shared logic in ``backends.tpu``
works unchanged.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from opt_tpu_tui.backends.tpu import TPUBackend
from opt_tpu_tui.errors import UserError

INSTALL_HINT = (
    "sophon-sail is not installed (it is not on PyPI: install the wheel from Sophgo's SDK that matches the "
    "box's libsophon, or `pip3 install dfss && python3 -m dfss --install sail`); or use --backend bmrt"
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


class SailDriver:
    """``tpu.Driver`` on a ``sail.Engine``: buffers are ``sail.Tensor`` objects.

    The engine is made with ``Engine(dev)`` and the bmodel added with ``load``: the
    constructor that takes the bmodel (``Engine(path, dev, IOMode.DEVIO)``) also allocates
    device memory for the inputs and outputs of every graph, which this backend never uses
    (it brings its own tensors): about 3x the KV cache for OPT-6.7B at context 512 with its
    decode windows. ``load`` reads the nets only.

    What the real binding does that shapes this code: ``asnumpy()`` of a BM_FLOAT16 /
    BM_BFLOAT16 tensor gives their bits as uint16, and ``update_data`` takes them so, in
    the tensor's exact shape; ``sync_d2s`` of a tensor without host memory silently does
    nothing (and ``asnumpy`` then gives zeros); every tensor holds the device handle, so the
    device is released only when the engine, the handle and all tensors are gone.
    """

    def __init__(self, bmodel: Path, device: int = 0) -> None:
        sail = self.sail = import_sail()
        self.engine = sail.Engine(device)  # a bmrt instance on the device: no graphs, no tensors yet
        self.handle = self.engine.get_handle()
        if not self.engine.load(str(bmodel)):
            self.close()
            raise UserError(f"{bmodel}: sail could not load it (not a bmodel, or one for another chip)")
        self.dtypes = {sail.Dtype.BM_FLOAT16: "float16", sail.Dtype.BM_BFLOAT16: "bfloat16", sail.Dtype.BM_FLOAT32: "float32"}
        self.codes = {name: code for code, name in self.dtypes.items()}
        self.graphs = set(self.engine.get_graph_names())
        self.names: dict[str, tuple[list[str], list[str]]] = {}

    def io(self, net: str) -> tuple[list[tuple[tuple[int, ...], str]], list[tuple[tuple[int, ...], str]]]:
        if net not in self.graphs:
            raise UserError(f"the loaded bmodel has no net named {net!r}")
        e = self.engine
        ins, outs = e.get_input_names(net), e.get_output_names(net)
        self.names[net] = (ins, outs)
        return (
            [(tuple(e.get_input_shape(net, n)), self.dtypes.get(e.get_input_dtype(net, n), "other")) for n in ins],
            [(tuple(e.get_output_shape(net, n)), self.dtypes.get(e.get_output_dtype(net, n), "other")) for n in outs],
        )

    def alloc(self, shape: tuple[int, ...], dtype: str, host: bool = False) -> Any:
        return self.sail.Tensor(self.handle, list(shape), self.codes[dtype], host, True)

    def view(self, buffer: Any, offset: int, shape: tuple[int, ...]) -> Any:
        return self.sail.Tensor(buffer, list(shape), offset, True)

    def upload(self, buffer: Any, array: np.ndarray) -> None:
        """16-bit data goes in as its uint16 bits, in the tensor's own shape (sail checks both)."""
        buffer.update_data(np.ascontiguousarray(array).reshape(buffer.shape()).view(np.uint16))
        if buffer.is_sys_data_valid():  # update_data filled the host copy only
            buffer.sync_s2d()

    def download(self, buffer: Any, array: np.ndarray) -> None:
        if not buffer.is_sys_data_valid():  # sync_d2s would do nothing and asnumpy give zeros
            raise ValueError("only a tensor allocated with host=True can be downloaded")
        buffer.sync_d2s()
        bits = buffer.asnumpy()
        if bits.dtype.itemsize != 2:
            raise RuntimeError(f"sophon.sail gave {bits.dtype} for a 16-bit tensor; this sail is not supported")
        array.view(np.uint16)[...] = bits.view(np.uint16).reshape(array.shape)

    def launch(self, net: str, inputs: list[Any], outputs: list[Any]) -> None:
        ins, outs = self.names[net]
        self.engine.process(net, dict(zip(ins, inputs)), dict(zip(outs, outputs)))

    def close(self) -> None:
        """Destroy the engine and drop the handle: with the caller's tensors gone first, the device is free now."""
        self.engine = self.handle = None


def open_sail(model_dir: Path, context: int | None = None, device: int = 0) -> TPUBackend:
    return TPUBackend("sail", model_dir, lambda bmodel: SailDriver(bmodel, device), context)
