"""ctypes bindings for libbmrt, Sophgo's bmodel runtime: the same C API on a box and on x86.

On a BM1684X box the libraries come from libsophon; on x86 the ones in the tpu-mlir
wheel run bmodels in the cmodel simulator, which libbmlib loads as ``libcmodel.so``.
Loading that file first with RTLD_GLOBAL lets libbmlib find it without
LD_LIBRARY_PATH, so Python 3.11 can drive the simulator in-process.
``OPT_TPU_TUI_BMRT_LIB`` names another library folder.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import numpy as np

from opt_tpu_tui.errors import UserError

LIB_ENV = "OPT_TPU_TUI_BMRT_LIB"
LIBSOPHON = Path("/opt/sophon/libsophon-current/lib")


class Shape(ctypes.Structure):
    _fields_ = [("num_dims", ctypes.c_int), ("dims", ctypes.c_int * 8)]

    @classmethod
    def of(cls, shape: tuple[int, ...]) -> Shape:
        return cls(len(shape), (ctypes.c_int * 8)(*shape))


def library_dir() -> Path:
    """libsophon on a box, else the simulator libraries of the tpu-mlir wheel (fetched on first use)."""
    if os.environ.get(LIB_ENV):
        return Path(os.environ[LIB_ENV])
    if (LIBSOPHON / "libbmrt.so").exists():
        return LIBSOPHON
    from opt_tpu_tui import toolchain

    return toolchain.root() / "lib"


class NetInfo(ctypes.Structure):
    """The leading fields of bmruntime's ``bm_net_info_t`` (all that is read here)."""

    _fields_ = [
        ("name", ctypes.c_char_p),
        ("is_dynamic", ctypes.c_bool),
        ("input_num", ctypes.c_int),
        ("input_names", ctypes.POINTER(ctypes.c_char_p)),
        ("input_dtypes", ctypes.POINTER(ctypes.c_int)),
        ("input_scales", ctypes.POINTER(ctypes.c_float)),
        ("output_num", ctypes.c_int),
        ("output_names", ctypes.POINTER(ctypes.c_char_p)),
        ("output_dtypes", ctypes.POINTER(ctypes.c_int)),
    ]


# bm_data_type_t -> numpy; a graph's IO is float16 except where an op keeps float32 (LayerNorm's input, say)
DTYPES = {0: np.dtype(np.float32), 1: np.dtype(np.float16), 6: np.dtype(np.int32)}


class Runtime:
    """One device handle and one bmrt instance with bmodels loaded into it."""

    def __init__(self, device: int = 0, lib_dir: Path | None = None) -> None:
        folder = lib_dir or library_dir()
        try:
            if (folder / "libcmodel.so").exists():
                ctypes.CDLL(str(folder / "libcmodel.so"), mode=ctypes.RTLD_GLOBAL)
            self.bmlib = ctypes.CDLL(str(folder / "libbmlib.so.0"), mode=ctypes.RTLD_GLOBAL)
            self.bmrt = ctypes.CDLL(str(folder / "libbmrt.so"), mode=ctypes.RTLD_GLOBAL)
        except OSError as error:
            raise UserError(f"{folder}: cannot load the bmrt runtime libraries ({error}); set {LIB_ENV}") from None
        self._declare()
        self.handle = ctypes.c_void_p()
        if self.bmlib.bm_dev_request(ctypes.byref(self.handle), device) != 0:
            raise UserError(f"cannot open TPU device {device}")
        self.p = self.bmrt.bmrt_create(self.handle)

    def _declare(self) -> None:
        rt, vp = self.bmrt, ctypes.c_void_p
        rt.bmrt_create.restype = vp
        rt.bmrt_create.argtypes = [vp]
        rt.bmrt_load_bmodel.argtypes = [vp, ctypes.c_char_p]
        rt.bmrt_load_bmodel.restype = ctypes.c_bool
        rt.bmrt_launch_data.argtypes = [vp, ctypes.c_char_p, vp, vp, ctypes.c_int, vp, vp, ctypes.c_int, ctypes.c_bool]
        rt.bmrt_launch_data.restype = ctypes.c_bool
        rt.bmrt_destroy.argtypes = [vp]
        rt.bmrt_get_network_info.argtypes = [vp, ctypes.c_char_p]
        rt.bmrt_get_network_info.restype = ctypes.POINTER(NetInfo)
        self.bmlib.bm_thread_sync.argtypes = [vp]
        self.bmlib.bm_dev_free.argtypes = [vp]

    def load(self, bmodel: Path) -> None:
        """Add the nets of ``bmodel``; a name already loaded keeps its first net, so names must differ."""
        if not self.bmrt.bmrt_load_bmodel(self.p, str(bmodel).encode()):
            raise UserError(f"{bmodel}: bmrt could not load it (not a bmodel, or one for another chip)")

    def io_dtypes(self, net: str) -> tuple[list[np.dtype], list[np.dtype]]:
        """The numpy dtypes of ``net``'s inputs and outputs, in order."""
        info = self.bmrt.bmrt_get_network_info(self.p, net.encode())
        if not info:
            raise UserError(f"the loaded bmodels have no net named {net!r}")
        i = info.contents
        try:
            return (
                [DTYPES[i.input_dtypes[k]] for k in range(i.input_num)],
                [DTYPES[i.output_dtypes[k]] for k in range(i.output_num)],
            )
        except KeyError as error:
            raise UserError(f"net {net!r} uses bm_data_type_t {error}, which this runtime does not handle") from None

    def launch(self, net: str, inputs: list[np.ndarray], outputs: list[np.ndarray]) -> None:
        """Run ``net`` on host arrays, filling ``outputs``; waits for it.

        Inputs are cast to the dtypes the bmodel declares; outputs must already have them,
        since the runtime writes as many bytes as it declares.
        """
        in_types, out_types = self.io_dtypes(net)
        wrong = [k for k, (a, t) in enumerate(zip(outputs, out_types)) if a.dtype != t or not a.flags.c_contiguous]
        if len(outputs) != len(out_types) or wrong:
            raise ValueError(f"{net}: outputs must be C-contiguous arrays of {[str(t) for t in out_types]}")
        ins = [np.ascontiguousarray(a, dtype=t) for a, t in zip(inputs, in_types)]
        in_ptrs = (ctypes.c_void_p * len(ins))(*[a.ctypes.data for a in ins])
        out_ptrs = (ctypes.c_void_p * len(outputs))(*[a.ctypes.data for a in outputs])
        in_shapes = (Shape * len(ins))(*[Shape.of(a.shape) for a in ins])
        out_shapes = (Shape * len(outputs))(*[Shape.of(a.shape) for a in outputs])
        ok = self.bmrt.bmrt_launch_data(
            self.p, net.encode(), in_ptrs, in_shapes, len(ins), out_ptrs, out_shapes, len(outputs), True
        )
        if not ok or self.bmlib.bm_thread_sync(self.handle) != 0:
            raise RuntimeError(f"bmrt launch of {net} failed")

    def close(self) -> None:
        """Free the device; on x86 this also stops the simulator, whose threads spin while it is open."""
        if self.p:
            self.bmrt.bmrt_destroy(self.p)
            self.bmlib.bm_dev_free(self.handle)
            self.p = None
