"""What a bmodel's header says: its chip, the tpu-mlir that compiled it, and the device memory its nets take.

A bmodel is a 64-byte header (magic 0xFF55AAEE, header size, flatbuffer size, binary size),
a flatbuffer describing the nets, then the binary (weights, instructions) the flatbuffer
points into. The flatbuffer's schema is tpu-mlir's ``bmodel.fbs`` (namespace ``bmodel``):
``Model {type, version, time, chip, net: [Net], neuron_size, kernel_module, ...}``,
``Net {name, net_static, net_dynamic, parameter: [NetParameter], ...}`` and per stage
``NetParameter {input_tensor, output_tensor, ctx_addr, ctx_size, coeff_mem, is_dynamic,
n_dynamic, h_w_dynamic, cmd_group, net_profile, stage_ir, binary_ir, sub_net, ...,
ctx_sizes, ...}``. Only what ``doctor`` needs is read, with a minimal flatbuffer reader
(no dependency): the runtime (libsophon) is not needed to read it, so a model can be
judged on a machine that cannot run it.

What bmrt allocates when it loads a bmodel, for the device memory estimate: the weights
once per distinct coefficient block (the sizes of a layer share theirs), each stage's
instructions (its command groups' BDC and GDMA binaries, or its dynamic IR), and the
activation scratch (``ctx_size``) of every stage, or of the largest one only when the
nets share it (``BM_RUNTIME_SHARE_MEM``, which both backends set).
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

MAGIC = 0xFF55AAEE
HEADER = struct.Struct("<IIII")
MAX_FLATBUFFER = 256 << 20  # far above any real model's description: a bigger one is a broken file


class BmodelError(ValueError):
    """The file is not a bmodel this reader understands; the message says why."""


class _Table:
    """A flatbuffer table: fields by their schema id, read on demand from the buffer."""

    def __init__(self, buf: bytes, pos: int) -> None:
        self.buf, self.pos = buf, pos
        vtable = pos - _unpack(buf, "<i", pos)
        self.vtable = vtable
        self.vsize = _unpack(buf, "<H", vtable)

    def _field(self, index: int) -> int | None:
        entry = 4 + 2 * index
        if entry >= self.vsize:
            return None
        offset = _unpack(self.buf, "<H", self.vtable + entry)
        return self.pos + offset if offset else None

    def scalar(self, index: int, fmt: str, default: int = 0) -> int:
        where = self._field(index)
        return default if where is None else _unpack(self.buf, "<" + fmt, where)

    def _target(self, index: int) -> int | None:
        where = self._field(index)
        return None if where is None else where + _unpack(self.buf, "<I", where)

    def string(self, index: int) -> str:
        where = self._target(index)
        if where is None:
            return ""
        length = _unpack(self.buf, "<I", where)
        return self.buf[where + 4 : where + 4 + length].decode("utf-8", "replace")

    def table(self, index: int) -> _Table | None:
        where = self._target(index)
        return None if where is None else _Table(self.buf, where)

    def tables(self, index: int) -> list[_Table]:
        where = self._target(index)
        if where is None:
            return []
        count = _unpack(self.buf, "<I", where)
        items = [where + 4 + 4 * k for k in range(count)]
        return [_Table(self.buf, item + _unpack(self.buf, "<I", item)) for item in items]

    def binary(self, index: int) -> tuple[int, int]:
        """A ``Binary`` struct field (start, size), inline in the table; (0, 0) when absent."""
        where = self._field(index)
        if where is None:
            return 0, 0
        return _unpack(self.buf, "<Q", where), _unpack(self.buf, "<Q", where + 8)

    def uint64s(self, index: int) -> list[int]:
        where = self._target(index)
        if where is None:
            return []
        count = _unpack(self.buf, "<I", where)
        return list(struct.unpack_from(f"<{count}Q", self.buf, where + 4))


def _unpack(buf: bytes, fmt: str, pos: int) -> int:
    if pos < 0:
        raise BmodelError("a flatbuffer offset points outside the file")
    try:
        return struct.unpack_from(fmt, buf, pos)[0]
    except struct.error:
        raise BmodelError("a flatbuffer offset points outside the file") from None


@dataclass(frozen=True)
class Stage:
    """One stage of one net: its activation scratch, instruction binaries and input/output count."""

    scratch: int
    bdc: tuple[tuple[int, int], ...]  # (start, size) of each TIU command binary, shared between nets
    gdma: int  # bytes of its DMA command binaries, which bmrt copies per net (it patches their addresses)
    inputs: tuple[tuple[tuple[int, ...], str], ...] = ()  # (shape, dtype name) of each input
    outputs: tuple[tuple[tuple[int, ...], str], ...] = ()

    @property
    def io(self) -> int:
        """Inputs and outputs."""
        return len(self.inputs) + len(self.outputs)


@dataclass(frozen=True)
class BmodelInfo:
    """The header of a bmodel, and the device memory bmrt takes to load it."""

    chip: str
    version: str  # the compiler's version string, tpu-mlir's among it
    created: str
    nets: dict[str, list[Stage]] = field(default_factory=dict)
    weights: int = 0  # distinct coefficient blocks, each counted once

    @property
    def stages(self) -> list[Stage]:
        return [stage for stages in self.nets.values() for stage in stages]

    @property
    def instructions(self) -> int:
        """What bmrt allocates for commands: each distinct TIU binary once, every net's DMA binary.

        Measured in the simulator (tests/device_memory.py) on the converted test models: the
        nets of every layer share their TIU binaries in a combined bmodel, and bmrt loads a
        shared one once, but gives each net its own copy of the DMA commands. model_tool's
        ``instruct`` figure counts every net's both, which is more.
        """
        return sum(size for _, size in {b for stage in self.stages for b in stage.bdc}) + sum(
            stage.gdma for stage in self.stages
        )

    @property
    def largest_scratch(self) -> int:
        return max((stage.scratch for stage in self.stages), default=0)

    @property
    def every_scratch(self) -> int:
        return sum(stage.scratch for stage in self.stages)

    @property
    def graph_io(self) -> int:
        """Inputs and outputs of every net, as in its first stage (EngineLLM opens a device handle for each)."""
        return sum(stages[0].io for stages in self.nets.values() if stages)

    def net_io(self, net: str) -> tuple[list[tuple[tuple[int, ...], str]], list[tuple[tuple[int, ...], str]]]:
        """(shape, dtype name) of ``net``'s inputs and outputs in its first stage, as a runtime driver's ``io``."""
        stage = self.nets[net][0]
        return list(stage.inputs), list(stage.outputs)

    def device_bytes(self, shared_scratch: bool = True) -> int:
        """Weights, instructions and the scratch: the largest stage's when shared, else every stage's."""
        scratch = self.largest_scratch if shared_scratch else self.every_scratch
        return self.weights + self.instructions + scratch

    @property
    def tpu_mlir_version(self) -> str | None:
        """The tpu-mlir version in the version string (``2.2+v1.30.2-20260831`` -> ``1.30.2``), if it names one."""
        found = re.search(r"v(\d+\.\d+(?:\.\d+)?)", self.version)
        return found.group(1) if found else None


def _stage(param: _Table) -> tuple[Stage, tuple[int, int]]:
    ctx_sizes = param.uint64s(14)  # per group of cores, where present; else the one ctx_size
    scratch = sum(ctx_sizes) if ctx_sizes else param.scalar(3, "Q")
    groups = param.tables(8) or [group for sub in param.tables(12) for group in sub.tables(1)]
    bdc = tuple(group.binary(2) for group in groups if group.binary(2)[1])
    gdma = sum(group.binary(3)[1] for group in groups) + param.binary(11)[1]  # dynamic nets: their IR
    coeff = param.table(4)
    weights = coeff.binary(2) if coeff is not None else (0, 0)
    return Stage(scratch, bdc, gdma, _tensors(param.tables(0)), _tensors(param.tables(1))), weights


# bm_data_type_t (bmdef.h) codes by the names bmrt_lib uses
DTYPES = {0: "float32", 1: "float16", 6: "int32", 8: "bfloat16"}


def _tensors(tables: list[_Table]) -> tuple[tuple[tuple[int, ...], str], ...]:
    """(shape of the first stage, dtype name) of each Tensor table."""
    found = []
    for tensor in tables:
        shapes = tensor.tables(5)
        shape = tuple(shapes[0].uint64s(0)) if shapes else ()
        found.append((shape, DTYPES.get(tensor.scalar(1, "I"), "other")))
    return tuple(found)


def read_bmodel(path: Path) -> BmodelInfo:
    """The header of the bmodel at ``path``; BmodelError (or OSError) if it cannot be read as one."""
    with open(path, "rb") as handle:
        head = handle.read(HEADER.size)
        if len(head) < HEADER.size:
            raise BmodelError("shorter than a bmodel header")
        magic, header_size, flat_size, _binary = HEADER.unpack(head)
        if magic != MAGIC:
            raise BmodelError("not a bmodel (no 0xFF55AAEE magic)")
        if not 0 < flat_size <= MAX_FLATBUFFER:
            raise BmodelError(f"a flatbuffer of {flat_size} bytes is not plausible")
        handle.seek(header_size)
        buf = handle.read(flat_size)
    if len(buf) < flat_size:
        raise BmodelError("truncated: the flatbuffer runs past the end of the file")
    model = _Table(buf, _unpack(buf, "<I", 0))
    nets: dict[str, list[Stage]] = {}
    blocks: set[tuple[int, int]] = set()
    for net in model.tables(4):
        stages = []
        for param in net.tables(3):
            stage, weights = _stage(param)
            stages.append(stage)
            if weights[1]:
                blocks.add(weights)
        nets[net.string(0)] = stages
    return BmodelInfo(
        chip=model.string(3), version=model.string(1), created=model.string(2), nets=nets,
        weights=sum(size for _, size in blocks),
    )  # fmt: skip


def read_bmodel_or_none(path: Path) -> tuple[Optional[BmodelInfo], Optional[str]]:
    """(info, None), or (None, why it could not be read): for reports that must not stop at a bad file."""
    try:
        return read_bmodel(path), None
    except (OSError, BmodelError, UnicodeDecodeError, RecursionError) as error:
        return None, str(getattr(error, "strerror", None) or error)


__all__: List[str] = ["BmodelError", "BmodelInfo", "Stage", "read_bmodel", "read_bmodel_or_none"]
