"""ctypes bindings for libbmrt, Sophgo's bmodel runtime: the same C API on a box and on x86.

On a BM1684X box the libraries come from libsophon; on x86 the ones in the tpu-mlir
wheel run bmodels in the cmodel simulator, which libbmlib loads as ``libcmodel.so``.
Loading that file first with RTLD_GLOBAL lets libbmlib find it without
LD_LIBRARY_PATH, so Python 3.11 can drive the simulator in-process.
``OPT_TPU_TUI_BMRT_LIB`` names another library folder.

The device handle is opened once per process and freed at exit: the simulator does not
start again cleanly in a process that freed it. Each ``Runtime`` is a bmrt instance of
its own on that handle, so two models' nets of the same name do not collide.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import weakref
from pathlib import Path

import numpy as np

from opt_tpu_tui.box import LIBSOPHON_DIR, chip_name
from opt_tpu_tui.errors import UserError

LIB_ENV = "OPT_TPU_TUI_BMRT_LIB"
LIBSOPHON = LIBSOPHON_DIR / "lib"
# bm_runtime_flag_t (bmdef.h): bit 0, the nets of a bmrt instance share one activation scratch
# (their neuron memory) of the largest size instead of each having its own
SHARE_MEM = 1 << 0


class Shape(ctypes.Structure):
    """bm_shape_t."""

    _fields_ = [("num_dims", ctypes.c_int), ("dims", ctypes.c_int * 8)]

    @classmethod
    def of(cls, shape: tuple[int, ...]) -> Shape:
        return cls(len(shape), (ctypes.c_int * 8)(*shape))

    def tuple(self) -> tuple[int, ...]:
        return tuple(self.dims[: self.num_dims])


class DeviceMemory(ctypes.Structure):
    """bm_device_mem_t: a device address and a size; a copy with another address is a view."""

    _fields_ = [
        ("addr", ctypes.c_ulonglong),
        ("reserved", ctypes.c_uint),
        ("dmabuf_fd", ctypes.c_int),
        ("flags", ctypes.c_uint),
        ("size", ctypes.c_uint),
    ]

    def view(self, offset: int, size: int) -> DeviceMemory:
        """``size`` bytes from ``offset`` of this block, sharing its memory."""
        if offset < 0 or offset + size > self.size:
            raise ValueError(f"view [{offset}, {offset + size}) is outside a block of {self.size} bytes")
        return DeviceMemory(self.addr + offset, self.reserved, self.dmabuf_fd, self.flags, size)


class Tensor(ctypes.Structure):
    """bm_tensor_t: dtype, shape and the device memory holding it."""

    _fields_ = [("dtype", ctypes.c_int), ("shape", Shape), ("mem", DeviceMemory), ("st_mode", ctypes.c_int)]


class StageInfo(ctypes.Structure):
    """bm_stage_info_t as libsophon's bmdef.h declares it now: 32 bytes on 64-bit hosts.

    It gained ``input_mems`` and ``output_mems`` after the first two pointers; read with
    the older 16-byte layout, stage 0 comes out right and every later stage is read from
    the wrong place.
    """

    _fields_ = [
        ("input_shapes", ctypes.POINTER(Shape)),
        ("output_shapes", ctypes.POINTER(Shape)),
        ("input_mems", ctypes.POINTER(DeviceMemory)),
        ("output_mems", ctypes.POINTER(DeviceMemory)),
    ]


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
        ("output_scales", ctypes.POINTER(ctypes.c_float)),
        ("stage_num", ctypes.c_int),
        ("stages", ctypes.POINTER(StageInfo)),
    ]


class HeapStat(ctypes.Structure):
    """struct bm_heap_stat (bmlib_runtime.h): MiB."""

    _fields_ = [("mem_total", ctypes.c_uint), ("mem_avail", ctypes.c_uint), ("mem_used", ctypes.c_uint)]


class DevStat(ctypes.Structure):
    """bm_dev_stat_t: device memory in MiB, TPU use in percent, and up to four heaps."""

    _fields_ = [("mem_total", ctypes.c_int), ("mem_used", ctypes.c_int), ("tpu_util", ctypes.c_int),
                ("heap_num", ctypes.c_int), ("heap_stat", HeapStat * 4)]  # fmt: skip


class HeapStatBytes(ctypes.Structure):
    """bm_heap_stat_byte_t: one heap in bytes."""

    _fields_ = [("heap_id", ctypes.c_uint), ("mem_total", ctypes.c_ulonglong), ("mem_avail", ctypes.c_ulonglong),
                ("mem_used", ctypes.c_ulonglong), ("mem_start_addr", ctypes.c_ulonglong)]  # fmt: skip


# bm_data_type_t codes by name, and the numpy dtype that holds each on the host (bfloat16 as its raw bits)
CODES = {"float32": 0, "float16": 1, "int32": 6, "bfloat16": 8}
NAMES = {code: name for name, code in CODES.items()}
HOST = {"float32": np.dtype(np.float32), "float16": np.dtype(np.float16), "int32": np.dtype(np.int32),
        "bfloat16": np.dtype(np.uint16)}  # fmt: skip


class Net:
    """What a loaded net takes and gives: names, dtype names, and the shapes of each stage.

    ``input_shapes`` and ``output_shapes`` are those of the first stage, the only one the
    converted models have; ``stages`` holds every stage's (input shapes, output shapes).
    """

    def __init__(self, info: NetInfo) -> None:
        self.name = info.name.decode()
        try:
            self.input_dtypes = [NAMES[info.input_dtypes[k]] for k in range(info.input_num)]
            self.output_dtypes = [NAMES[info.output_dtypes[k]] for k in range(info.output_num)]
        except KeyError as error:
            raise UserError(f"net {self.name!r} uses bm_data_type_t {error}, which this runtime does not handle") from None
        self.input_names = [info.input_names[k].decode() for k in range(info.input_num)]
        self.output_names = [info.output_names[k].decode() for k in range(info.output_num)]
        self.stages = [
            (
                [info.stages[s].input_shapes[k].tuple() for k in range(info.input_num)],
                [info.stages[s].output_shapes[k].tuple() for k in range(info.output_num)],
            )
            for s in range(info.stage_num)
        ]
        self.input_shapes, self.output_shapes = self.stages[0]


def library_dir() -> Path:
    """libsophon on a box, else the simulator libraries of the tpu-mlir wheel (fetched on first use)."""
    if os.environ.get(LIB_ENV):
        return Path(os.environ[LIB_ENV])
    if (LIBSOPHON / "libbmrt.so").exists():
        return LIBSOPHON
    from opt_tpu_tui import toolchain

    return toolchain.root() / "lib"


def on_device() -> bool:
    """Whether a real TPU runtime is installed (or named by the override), as opposed to the simulator."""
    return bool(os.environ.get(LIB_ENV)) or (LIBSOPHON / "libbmrt.so").exists()


class _Libraries:
    """libbmlib and libbmrt with their argument types, and the process's device handles."""

    def __init__(self, folder: Path) -> None:
        try:
            if (folder / "libcmodel.so").exists():
                ctypes.CDLL(str(folder / "libcmodel.so"), mode=ctypes.RTLD_GLOBAL)
            self.bmlib = ctypes.CDLL(str(folder / "libbmlib.so.0"), mode=ctypes.RTLD_GLOBAL)
            self.bmrt = ctypes.CDLL(str(folder / "libbmrt.so"), mode=ctypes.RTLD_GLOBAL)
        except OSError as error:
            raise UserError(f"{folder}: cannot load the bmrt runtime libraries ({error}); set {LIB_ENV}") from None
        vp, mem, size = ctypes.c_void_p, DeviceMemory, ctypes.c_size_t
        tensors = ctypes.POINTER(Tensor)
        for name, args, result in [
            ("bmrt_create", [vp], vp),
            ("bmrt_destroy", [vp], None),
            ("bmrt_load_bmodel", [vp, ctypes.c_char_p], ctypes.c_bool),
            ("bmrt_get_network_info", [vp, ctypes.c_char_p], ctypes.POINTER(NetInfo)),
            ("bmrt_get_network_number", [vp], ctypes.c_int),
            ("bmrt_get_network_names", [vp, ctypes.POINTER(ctypes.POINTER(ctypes.c_char_p))], None),
            ("bmrt_launch_data", [vp, ctypes.c_char_p, vp, vp, ctypes.c_int, vp, vp, ctypes.c_int, ctypes.c_bool],
             ctypes.c_bool),
            ("bmrt_launch_tensor_ex", [vp, ctypes.c_char_p, tensors, ctypes.c_int, tensors, ctypes.c_int,
                                       ctypes.c_bool, ctypes.c_bool], ctypes.c_bool),
        ]:  # fmt: skip
            function = getattr(self.bmrt, name)
            function.argtypes, function.restype = args, result
        # void bmrt_set_flags(void* p_bmrt, uint32_t flags) and uint32_t bmrt_get_flags(void* p_bmrt)
        # (bmruntime_interface.h); a libsophon without them gives every net its own scratch, which costs
        # memory but nothing else
        self.set_flags = getattr(self.bmrt, "bmrt_set_flags", None)
        self.get_flags = getattr(self.bmrt, "bmrt_get_flags", None)
        if self.set_flags is None or self.get_flags is None:
            self.set_flags = self.get_flags = None
        else:
            self.set_flags.argtypes, self.set_flags.restype = [vp, ctypes.c_uint32], None
            self.get_flags.argtypes, self.get_flags.restype = [vp], ctypes.c_uint32
        status = ctypes.c_int  # bm_status_t; bm_dev_free and bm_free_device return void (bmlib_runtime.h)
        for name, args, result in [
            ("bm_dev_request", [ctypes.POINTER(vp), ctypes.c_int], status),
            ("bm_dev_free", [vp], None),
            ("bm_thread_sync", [vp], status),
            ("bm_malloc_device_byte", [vp, ctypes.POINTER(mem), ctypes.c_uint], status),
            ("bm_free_device", [vp, mem], None),
            ("bm_memcpy_s2d_partial", [vp, mem, vp, ctypes.c_uint], status),
            ("bm_memcpy_d2s_partial", [vp, vp, mem, ctypes.c_uint], status),
            ("bm_memcpy_d2d_byte", [vp, mem, size, mem, size, size], status),
        ]:
            function = getattr(self.bmlib, name)
            function.argtypes, function.restype = args, result
        # statistics (bmlib_runtime.h); optional: a library without one leaves that figure unknown
        self.stats: dict[str, ctypes._CFuncPtr] = {}
        for name, args in [
            ("bm_get_stat", [vp, ctypes.POINTER(DevStat)]),
            ("bm_get_gmem_total_heap_num", [vp, ctypes.POINTER(ctypes.c_uint)]),
            ("bm_get_gmem_heap_stat_byte_by_id", [vp, ctypes.POINTER(HeapStatBytes), ctypes.c_uint]),
            ("bm_get_chipid", [vp, ctypes.POINTER(ctypes.c_uint)]),
            ("bm_get_driver_version", [vp, ctypes.POINTER(ctypes.c_int)]),
        ]:
            function = getattr(self.bmlib, name, None)
            if function is not None:
                function.argtypes, function.restype = args, status
                self.stats[name] = function
        self.handles: dict[int, ctypes.c_void_p] = {}
        self.runtimes: weakref.WeakSet[Runtime] = weakref.WeakSet()
        atexit.register(self._free_handles)

    def handle(self, device: int) -> ctypes.c_void_p:
        if device not in self.handles:
            handle = ctypes.c_void_p()
            if self.bmlib.bm_dev_request(ctypes.byref(handle), device) != 0:
                raise UserError(f"cannot open TPU device {device}")
            self.handles[device] = handle
        return self.handles[device]

    def _free_handles(self) -> None:
        """At exit: close what is still open (bmlib asserts on device memory left allocated), then the devices."""
        for runtime in list(self.runtimes):
            runtime.close()
        for handle in self.handles.values():
            self.bmlib.bm_dev_free(handle)
        self.handles.clear()


_loaded: dict[Path, _Libraries] = {}


class DeviceStats:
    """Device memory and TPU use of one device through libbmlib, the library every libsophon has.

    Where sophon-sail is absent (a box running ``--backend bmrt``) this is what the stats
    pane and ``doctor`` read. The device handle is the process's own (``_Libraries.handle``),
    opened on first use. Each reading is None where the library lacks the function, the call
    fails, or the figure is not sensible: the simulator's libbmlib answers ``bm_get_stat``
    with zeros, as it keeps no statistics.
    """

    def __init__(self, device: int = 0, lib_dir: Path | None = None) -> None:
        self.libs = libraries(lib_dir)
        self.device = device

    def _call(self, name: str, *args: object) -> bool:
        function = self.libs.stats.get(name)
        return function is not None and function(self.libs.handle(self.device), *args) == 0

    def stat(self) -> DevStat | None:
        stat = DevStat()
        return stat if self._call("bm_get_stat", ctypes.byref(stat)) else None

    def memory(self) -> tuple[int, int] | None:
        """(used, total) bytes: the heaps' byte figures where the library has them, else bm_get_stat's MiB."""
        count = ctypes.c_uint()
        if self._call("bm_get_gmem_total_heap_num", ctypes.byref(count)) and 0 < count.value <= 16:
            used = total = 0
            for heap in range(count.value):
                info = HeapStatBytes()
                if not self._call("bm_get_gmem_heap_stat_byte_by_id", ctypes.byref(info), heap):
                    break
                used, total = used + info.mem_used, total + info.mem_total
            else:
                if 0 < total and 0 <= used <= total:
                    return used, total
        stat = self.stat()
        if stat is None or stat.mem_total <= 0 or not 0 <= stat.mem_used <= stat.mem_total:
            return None
        return stat.mem_used * 2**20, stat.mem_total * 2**20

    def heaps(self) -> list[tuple[int, int, int]] | None:
        """(heap id, total bytes, used bytes) of each heap; None where unknown or all zero."""
        count = ctypes.c_uint()
        if not self._call("bm_get_gmem_total_heap_num", ctypes.byref(count)) or not 0 < count.value <= 16:
            return None
        found = []
        for heap in range(count.value):
            info = HeapStatBytes()
            if not self._call("bm_get_gmem_heap_stat_byte_by_id", ctypes.byref(info), heap):
                return None
            found.append((heap, int(info.mem_total), int(info.mem_used)))
        return found if any(total for _, total, _ in found) else None

    def tpu_util(self) -> float | None:
        """Percent, from bm_get_stat; None if unknown (or out of range)."""
        stat = self.stat()
        if stat is None or stat.mem_total <= 0 or not 0 <= stat.tpu_util <= 100:
            return None  # a device with no memory figures gives no trustworthy use either (the simulator's zeros)
        return float(stat.tpu_util)

    def chip(self) -> str | None:
        """BM1684X, BM1684, ... from bm_get_chipid (0x1686 is the BM1684X)."""
        chip = ctypes.c_uint()
        if not self._call("bm_get_chipid", ctypes.byref(chip)):
            return None
        return chip_name(f"0x{chip.value:x}") or f"chip id 0x{chip.value:x}"

    def driver_version(self) -> str | None:
        """"0.5.1" from bm_get_driver_version's (chip << 16) | (major << 8) | minor."""
        version = ctypes.c_int()
        if not self._call("bm_get_driver_version", ctypes.byref(version)) or version.value <= 0:
            return None
        v = version.value
        return f"{v >> 16}.{(v >> 8) & 0xFF}.{v & 0xFF}"


def libraries(folder: Path | None = None) -> _Libraries:
    folder = folder or library_dir()
    if folder not in _loaded:
        _loaded[folder] = _Libraries(folder)
    return _loaded[folder]


class Runtime:
    """A bmrt instance on a device, the bmodels loaded into it, and the device memory it allocated.

    ``share_scratch`` (the default) sets ``BM_RUNTIME_SHARE_MEM`` before anything is loaded:
    then every net of the instance runs in one activation scratch of the largest net's size,
    where without it bmrt allocates each net (each stage) its own. That is safe here because
    this instance runs one net at a time, to completion (``launch`` and ``launch_tensors``
    wait), and because what must outlive a launch (the KV cache, inputs, outputs) is device
    memory of our own from ``malloc``, outside bmrt's scratch. Nets run concurrently on one
    instance, or outputs left in bmrt's own buffers, would need it off.
    """

    def __init__(self, device: int = 0, lib_dir: Path | None = None, share_scratch: bool = True) -> None:
        libs = libraries(lib_dir)
        self.bmlib, self.bmrt = libs.bmlib, libs.bmrt
        self.handle = libs.handle(device)
        self.p = self.bmrt.bmrt_create(self.handle)
        libs.runtimes.add(self)
        if not self.p:
            raise UserError(f"bmrt could not start on TPU device {device}")
        self.shares_scratch = share_scratch and libs.set_flags is not None
        if self.shares_scratch:
            # tpu-mlir 1.30's bmrt ORs the flags in, and with SHARE_MEM also sets SHARE_DYNMEM (bit 2), which
            # is what makes its nets share their scratch (bit 0 alone is already on by default there); the
            # header documents it as a plain set, so keep whatever is on
            libs.set_flags(self.p, libs.get_flags(self.p) | SHARE_MEM)
        self.blocks: list[DeviceMemory] = []
        self._nets: dict[str, Net] = {}

    def load(self, bmodel: Path) -> None:
        """Add the nets of ``bmodel``; a name already loaded keeps its first net, so names must differ."""
        if not self.bmrt.bmrt_load_bmodel(self.p, str(bmodel).encode()):
            raise UserError(f"{bmodel}: bmrt could not load it (not a bmodel, or one for another chip)")

    def net_names(self) -> list[str]:
        """The names of every loaded net."""
        names = ctypes.POINTER(ctypes.c_char_p)()
        count = self.bmrt.bmrt_get_network_number(self.p)
        self.bmrt.bmrt_get_network_names(self.p, ctypes.byref(names))
        found = [names[k].decode() for k in range(count)]
        ctypes.CDLL(None).free(names)  # bmrt allocates the array with malloc; the strings are its own
        return found

    def net(self, name: str) -> Net:
        if name not in self._nets:
            info = self.bmrt.bmrt_get_network_info(self.p, name.encode())
            if not info:
                raise UserError(f"the loaded bmodel has no net named {name!r}")
            self._nets[name] = Net(info.contents)
        return self._nets[name]

    def io_dtypes(self, net: str) -> tuple[list[np.dtype], list[np.dtype]]:
        """The host numpy dtypes of ``net``'s inputs and outputs, in order (bfloat16 as uint16 bits)."""
        found = self.net(net)
        return [HOST[t] for t in found.input_dtypes], [HOST[t] for t in found.output_dtypes]

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

    # -- device memory and the tensor API: what keeps the KV cache on the device --

    def malloc(self, nbytes: int) -> DeviceMemory:
        """``nbytes`` of device memory, freed by ``close``."""
        block = DeviceMemory()
        if self.bmlib.bm_malloc_device_byte(self.handle, ctypes.byref(block), nbytes) != 0:
            raise UserError(f"out of TPU device memory allocating {nbytes / 2**20:.1f} MiB")
        self.blocks.append(block)
        return block

    def tensor(self, mem: DeviceMemory, shape: tuple[int, ...], dtype: str) -> Tensor:
        """A bm_tensor_t of dtype name ``dtype`` over ``mem``."""
        if int(np.prod(shape)) * HOST[dtype].itemsize > mem.size:
            raise ValueError(f"a {shape} {dtype} tensor does not fit in {mem.size} bytes")
        return Tensor(CODES[dtype], Shape.of(shape), mem, 0)

    def upload(self, mem: DeviceMemory, array: np.ndarray) -> None:
        """Copy a C-contiguous host array to the start of ``mem``."""
        if array.nbytes > mem.size or not array.flags.c_contiguous:
            raise ValueError(f"cannot copy {array.nbytes} bytes into a block of {mem.size}")
        if self.bmlib.bm_memcpy_s2d_partial(self.handle, mem, array.ctypes.data, array.nbytes) != 0:
            raise RuntimeError("host to device copy failed")

    def download(self, mem: DeviceMemory, array: np.ndarray) -> np.ndarray:
        """Fill a C-contiguous host array from the start of ``mem``."""
        if array.nbytes > mem.size or not array.flags.c_contiguous:
            raise ValueError(f"cannot copy {mem.size} bytes into a host array of {array.nbytes}")
        if self.bmlib.bm_memcpy_d2s_partial(self.handle, array.ctypes.data, mem, array.nbytes) != 0:
            raise RuntimeError("device to host copy failed")
        return array

    def launch_tensors(self, net: bytes, inputs: ctypes.Array, outputs: ctypes.Array) -> None:
        """Run ``net`` on device tensors; outputs land in the memory their tensors name. Waits for it."""
        ok = self.bmrt.bmrt_launch_tensor_ex(self.p, net, inputs, len(inputs), outputs, len(outputs), True, False)
        if not ok or self.bmlib.bm_thread_sync(self.handle) != 0:
            raise RuntimeError(f"bmrt launch of {net.decode()} failed")

    def close(self) -> None:
        """Free this instance's device memory and nets; the device stays open for the process."""
        if self.p:
            for block in self.blocks:
                self.bmlib.bm_free_device(self.handle, block)
            self.blocks.clear()
            self.bmrt.bmrt_destroy(self.p)
            self.p = None
