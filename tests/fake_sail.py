"""A test-only stand-in for ``sophon.sail``, built on the bmrt runtime, so the sail backend's real code runs in the simulator.

It implements just the part of sail's Python API that ``backends.sail`` uses, with
sail's signatures (Engine in DEVIO mode, Tensor with device memory and zero-copy views,
update_data / sync_d2s / asnumpy), and nothing more: a call outside that subset fails
here as it would be a guess about the real binding.
"""

from __future__ import annotations

import enum
from types import ModuleType

import numpy as np

from opt_tpu_tui.backends import bmrt_lib
from opt_tpu_tui.backends.bmrt_lib import Runtime


class Dtype(enum.Enum):
    BM_FLOAT32 = 0
    BM_FLOAT16 = 1
    BM_INT32 = 6
    BM_BFLOAT16 = 8


class IOMode(enum.Enum):
    SYSI, SYSO, SYSIO, DEVIO = range(4)


class Handle:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime


class Tensor:
    """``Tensor(handle, shape, dtype, own_sys_data, own_dev_data)`` or the view ``Tensor(src, shape, offset, True)``."""

    def __init__(self, first, shape: list[int], third, fourth: bool, own_dev_data: bool | None = None) -> None:
        self._shape = list(shape)
        count = int(np.prod(shape))
        if isinstance(first, Tensor):  # a zero-copy view, offset in elements
            assert fourth is True, "only no-copy views are used"
            self.runtime, self._dtype, self.sys = first.runtime, first._dtype, None
            self.owns_device = False
            self.mem = first.mem.view(third * first.itemsize, count * first.itemsize)
        else:
            assert own_dev_data, "the backend keeps every tensor on the device"
            self.runtime, self._dtype = first.runtime, third
            self.sys = np.zeros(count, np.uint16 if self.itemsize == 2 else np.uint32) if fourth else None
            self.owns_device = True
            self.mem = self.runtime.malloc(count * self.itemsize)

    @property
    def itemsize(self) -> int:
        return 4 if self._dtype in (Dtype.BM_FLOAT32, Dtype.BM_INT32) else 2

    def shape(self) -> list[int]:
        return list(self._shape)

    def dtype(self) -> Dtype:
        return self._dtype

    def update_data(self, data: np.ndarray) -> None:
        """As sail: into system memory if the tensor has it, else straight to the device."""
        assert data.dtype == np.uint16 and data.size == int(np.prod(self._shape)), "16-bit data goes in as uint16"
        if self.sys is not None:
            self.sys[...] = data.reshape(-1)
        else:
            self.runtime.upload(self.mem, np.ascontiguousarray(data))

    def sync_d2s(self) -> None:
        self.runtime.download(self.mem, self.sys)

    def asnumpy(self) -> np.ndarray:
        kind = {Dtype.BM_FLOAT16: np.float16, Dtype.BM_FLOAT32: np.float32}.get(self._dtype, np.uint16)
        return self.sys.view(kind).reshape(self._shape).copy()

    def tensor(self) -> bmrt_lib.Tensor:
        return bmrt_lib.Tensor(self._dtype.value, bmrt_lib.Shape.of(tuple(self._shape)), self.mem, 0)


class Engine:
    def __init__(self, bmodel_path: str, dev_id: int, mode: IOMode) -> None:
        assert mode is IOMode.DEVIO
        self.runtime = Runtime(dev_id)
        self.runtime.load(bmodel_path)

    def __del__(self) -> None:
        self.runtime.close()

    def get_handle(self) -> Handle:
        return Handle(self.runtime)

    def get_graph_names(self) -> list[str]:
        return self.runtime.net_names()

    def get_input_names(self, graph: str) -> list[str]:
        return self.runtime.net(graph).input_names

    def get_output_names(self, graph: str) -> list[str]:
        return self.runtime.net(graph).output_names

    def _io(self, graph: str, name: str) -> tuple[tuple[int, ...], str]:
        net = self.runtime.net(graph)
        io = dict(zip(net.input_names + net.output_names, zip(net.input_shapes + net.output_shapes,
                                                               net.input_dtypes + net.output_dtypes)))
        return io[name]

    def get_input_shape(self, graph: str, name: str) -> list[int]:
        return list(self._io(graph, name)[0])

    get_output_shape = get_input_shape

    def get_input_dtype(self, graph: str, name: str) -> Dtype:
        return Dtype(bmrt_lib.CODES[self._io(graph, name)[1]])

    get_output_dtype = get_input_dtype

    def process(self, graph: str, inputs: dict[str, Tensor], outputs: dict[str, Tensor]) -> None:
        net = self.runtime.net(graph)
        ins = [inputs[n].tensor() for n in net.input_names]
        outs = [outputs[n].tensor() for n in net.output_names]
        self.runtime.launch_tensors(graph.encode(), (bmrt_lib.Tensor * len(ins))(*ins), (bmrt_lib.Tensor * len(outs))(*outs))


def module() -> ModuleType:
    """A module object to install as ``sophon.sail``."""
    sail = ModuleType("sophon.sail")
    for name in ("Dtype", "IOMode", "Handle", "Tensor", "Engine"):
        setattr(sail, name, globals()[name])
    return sail
