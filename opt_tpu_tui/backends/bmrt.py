"""``--backend bmrt``: the TPU backend driven through libbmrt's C API with ctypes.

The same code runs on a box (libsophon) and on x86 in the cmodel simulator; see
``bmrt_lib`` for how the libraries are found.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from opt_tpu_tui import original_layout
from opt_tpu_tui.backends import bmrt_lib
from opt_tpu_tui.backends.base import Backend
from opt_tpu_tui.backends.bmrt_lib import Runtime, Shape, Tensor
from opt_tpu_tui.backends.original import OriginalBackend
from opt_tpu_tui.backends.tpu import TPUBackend


ITEMSIZE = {code: bmrt_lib.HOST[name].itemsize for name, code in bmrt_lib.CODES.items()}


class BmrtDriver:
    """``tpu.Driver`` on a bmrt instance: buffers are bm_tensor_t structs, views repoint their memory."""

    def __init__(self, bmodel: Path, device: int = 0) -> None:
        self.runtime = Runtime(device)
        try:
            self.runtime.load(bmodel)
        except BaseException:
            self.runtime.close()
            raise

    def io(self, net: str) -> tuple[list[tuple[tuple[int, ...], str]], list[tuple[tuple[int, ...], str]]]:
        found = self.runtime.net(net)
        return list(zip(found.input_shapes, found.input_dtypes)), list(zip(found.output_shapes, found.output_dtypes))

    def net_names(self) -> list[str]:
        return self.runtime.net_names()

    def stages(self, net: str) -> list[tuple[list[tuple[int, ...]], list[tuple[int, ...]]]]:
        return self.runtime.net(net).stages

    def alloc(self, shape: tuple[int, ...], dtype: str, host: bool = False) -> Tensor:
        nbytes = math.prod(shape) * bmrt_lib.HOST[dtype].itemsize
        return self.runtime.tensor(self.runtime.malloc(nbytes), shape, dtype)

    def view(self, buffer: Tensor, offset: int, shape: tuple[int, ...]) -> Tensor:
        itemsize = ITEMSIZE[buffer.dtype]
        return Tensor(buffer.dtype, Shape.of(shape), buffer.mem.view(offset * itemsize, math.prod(shape) * itemsize), 0)

    def upload(self, buffer: Tensor, array: np.ndarray) -> None:
        self.runtime.upload(buffer.mem, array)

    def download(self, buffer: Tensor, array: np.ndarray) -> None:
        self.runtime.download(buffer.mem, array)

    def launch(self, net: str, inputs: list[Tensor], outputs: list[Tensor]) -> None:
        self.runtime.launch_tensors(net.encode(), (Tensor * len(inputs))(*inputs), (Tensor * len(outputs))(*outputs))

    def close(self) -> None:
        self.runtime.close()


def open_bmrt(model_dir: Path, context: int | None = None, device: int = 0) -> Backend:
    """A converted model directory, or one holding an OPT-TPU (original project) bmodel, run through bmrt."""
    if original_layout.is_original(model_dir):
        return OriginalBackend("bmrt", model_dir, lambda bmodel: BmrtDriver(bmodel, device), context)
    return TPUBackend("bmrt", model_dir, lambda bmodel: BmrtDriver(bmodel, device), context)
