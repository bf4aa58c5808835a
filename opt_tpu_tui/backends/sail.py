"""``--backend sail``: the TPU backend through Sophgo's Python binding, ``sophon.sail``.

sophon-sail is not on PyPI; on a box it comes with Sophgo's SDK, so it is imported only
here, when this backend is chosen. An ``Engine`` in DEVIO mode runs each net on
``sail.Tensor`` objects in device memory, and the KV cache slots are zero-copy views
(``sail.Tensor(src, shape, offset, True)``), so the shared logic in ``backends.tpu``
works unchanged.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from opt_tpu_tui.backends.tpu import TPUBackend, to_device
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
    """``tpu.Driver`` on a ``sail.Engine``: buffers are ``sail.Tensor`` objects."""

    def __init__(self, bmodel: Path, device: int = 0) -> None:
        sail = self.sail = import_sail()
        self.engine = sail.Engine(str(bmodel), device, sail.IOMode.DEVIO)
        self.handle = self.engine.get_handle()
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
        buffer.update_data(array.reshape(buffer.shape()).view(np.uint16))  # 16-bit data goes in as uint16

    def download(self, buffer: Any, array: np.ndarray) -> None:
        buffer.sync_d2s()
        data = buffer.asnumpy().reshape(array.shape)
        if data.dtype.itemsize == 4:  # a sail build that widens 16-bit data to float32
            data = to_device(data.astype(np.float32), self.dtypes[buffer.dtype()])
        array.view(np.uint16)[...] = data.view(np.uint16)

    def launch(self, net: str, inputs: list[Any], outputs: list[Any]) -> None:
        ins, outs = self.names[net]
        self.engine.process(net, dict(zip(ins, inputs)), dict(zip(outs, outputs)))

    def close(self) -> None:
        self.engine = None  # sail frees the device memory of its tensors and engine when they are collected


def open_sail(model_dir: Path, context: int | None = None, device: int = 0) -> TPUBackend:
    return TPUBackend("sail", model_dir, lambda bmodel: SailDriver(bmodel, device), context)
