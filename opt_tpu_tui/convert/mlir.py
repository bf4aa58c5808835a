"""Top-dialect MLIR text, built op by op; weights go to the .npz its module names."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

CHUNK_BYTES = 16 * 2**20
ZIP64 = 45  # the zip version that reads ZIP64 extras
DOS_DATE = 33  # 1980-01-01, zip's epoch: the archive's bytes depend on its arrays alone


def float32_blocks(array: np.ndarray) -> Iterator[bytes]:
    """``array`` as C-ordered little-endian float32 bytes, a block of rows at a time (never a whole copy)."""
    rows = array.reshape(1, -1) if array.ndim == 0 else array.reshape(-1, *array.shape[-1:])
    step = max(1, CHUNK_BYTES // max(1, rows.shape[1] * 4))
    for start in range(0, rows.shape[0], step):
        yield np.ascontiguousarray(rows[start : start + step], dtype="<f4").tobytes()


def write_float32_npz(out: BinaryIO, arrays: dict[str, np.ndarray]) -> None:
    """What ``np.savez`` writes for the arrays cast to float32 (stored, ZIP64), written front to back without a seek.

    The arrays are the checkpoint's own (float16, transposed views), so a layer's graph
    never holds a float32 copy of its weights: for OPT-6.7B that copy is 800 MB a graph.
    Without seeking, ``out`` may be a pipe: ``convert`` streams each graph's weights into
    tpuc-opt through one (``toolchain.compile_top``'s ``feed``), so that they never take
    disk. Each member's size and CRC go into its local header, before its data, as
    tpu-mlir's npz reader (cnpy) needs: it reads the local headers in order and never the
    central directory. So each array is cast twice, once for the CRC and once to write.
    """
    offset, members = 0, []
    for name, array in arrays.items():
        npy = io.BytesIO()
        np.lib.format.write_array_header_1_0(npy, {"descr": "<f4", "fortran_order": False, "shape": array.shape})
        head = npy.getvalue()
        crc = zlib.crc32(head)
        for block in float32_blocks(array):
            crc = zlib.crc32(block, crc)
        size, filename = len(head) + 4 * array.size, f"{name}.npy".encode()
        local = struct.pack("<IHHHHHIIIHH", 0x04034B50, ZIP64, 0, 0, 0, DOS_DATE, crc, 0xFFFFFFFF, 0xFFFFFFFF,
                            len(filename), 20) + filename + struct.pack("<HHQQ", 1, 16, size, size)  # fmt: skip
        out.write(local + head)
        for block in float32_blocks(array):
            out.write(block)
        members.append((filename, crc, size, offset))
        offset += len(local) + size
    directory = b"".join(
        struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, ZIP64, ZIP64, 0, 0, 0, DOS_DATE, crc, 0xFFFFFFFF, 0xFFFFFFFF,
                    len(filename), 28, 0, 0, 0, 0, 0xFFFFFFFF) + filename + struct.pack("<HHQQQ", 1, 24, size, size, at)
        for filename, crc, size, at in members
    )  # fmt: skip
    count, end = len(members), offset + len(directory)
    out.write(directory)
    out.write(struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, ZIP64, ZIP64, 0, 0, count, count, len(directory), offset))
    out.write(struct.pack("<IIQI", 0x07064B50, 0, end, 1))
    out.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0))


def tensor(shape: tuple[int, ...]) -> str:
    return "tensor<" + "x".join(map(str, shape)) + "xf32>"


def attr(value: object) -> str:
    """An MLIR attribute: floats as f64 in full (tpuc-opt rejects "1e-05"), (n, "si32") typed ints, lists, strings."""
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.9e} : f64"
    if isinstance(value, tuple):  # (int, "si32")
        return f"{value[0]} : {value[1]}"
    if isinstance(value, list):
        return "[" + ", ".join(map(str, value)) + "]"
    return str(value)


class Graph:
    """One function @main: inputs, weights and ops, written out as a module with its .npz.

    Every value carries a unique ``loc`` name; a weight's is also its key in the .npz.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.inputs: list[tuple[str, tuple[int, ...]]] = []
        self.lines: list[str] = []
        self.locs: list[str] = []
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.weights: dict[str, np.ndarray] = {}
        self.count = 1

    def _value(self, loc: str, shape: tuple[int, ...]) -> str:
        value = f"%{self.count}"
        self.count += 1
        self.locs.append(loc)
        self.shapes[value] = shape
        return value

    def input(self, loc: str, shape: tuple[int, ...]) -> str:
        arg = f"%arg{len(self.inputs)}"
        self.inputs.append((arg, shape))
        value = self._value(loc, shape)
        self.lines.append(f'{value} = "top.Input"({arg}) : ({tensor(shape)}) -> {tensor(shape)} loc(#loc{len(self.locs)})')
        return value

    def weight(self, loc: str, array: np.ndarray) -> str:
        """A weight (any float dtype, any layout; not to be changed until ``write``), written as float32."""
        self.weights[loc] = array
        value = self._value(loc, array.shape)
        self.lines.append(f'{value} = "top.Weight"() : () -> {tensor(array.shape)} loc(#loc{len(self.locs)})')
        return value

    def op(self, kind: str, loc: str, operands: list[str | None], out: tuple[int, ...], **attrs: object) -> str:
        value = self._value(loc, out)
        names = [o if o is not None else "%0" for o in operands]
        types = [tensor(self.shapes[o]) if o is not None else "none" for o in operands]
        attributes = ", ".join(f"{k} = {attr(v)}" for k, v in attrs.items())
        self.lines.append(
            f'{value} = "top.{kind}"({", ".join(names)}) {{{attributes}}} : ({", ".join(types)}) -> {tensor(out)} '
            f"loc(#loc{len(self.locs)})"
        )
        return value

    def ops(self, kind: str, locs: list[str], operands: list[str], outs: list[tuple[int, ...]], **attrs: object) -> list[str]:
        """An op with several results (``top.Arg``: indices, values), one ``loc`` name each; returns them in order.

        Its location is ``fused`` from the results' names, written inline (tpuc-opt does not
        resolve a ``#loc`` alias inside ``fused``), which is how tpu-mlir names each output.
        """
        value = f"%{self.count}"
        self.count += 1
        results = [f"{value}#{k}" for k in range(len(outs))]
        for result, shape in zip(results, outs):
            self.shapes[result] = shape
        attributes = ", ".join(f"{k} = {attr(v)}" for k, v in attrs.items())
        types = ", ".join(tensor(self.shapes[o]) for o in operands)
        fused = ", ".join(f'"{loc}"' for loc in locs)
        self.lines.append(
            f'{value}:{len(outs)} = "top.{kind}"({", ".join(operands)}) {{{attributes}}} : ({types}) -> '
            f'({", ".join(tensor(s) for s in outs)}) loc(fused[{fused}])'
        )
        return results

    def write(self, folder: Path, outputs: list[str]) -> Path:
        """Write the module and its weights file under ``folder``; return the .mlir."""
        mlir = self.write_module(folder, outputs)
        with self.weights_file(mlir).open("wb") as out:
            self.write_weights(out)
        return mlir

    def weights_file(self, mlir: Path) -> Path:
        """Where the module written to ``mlir`` reads its weights (from its folder, by the name it gives)."""
        return mlir.parent / f"{self.name}_top_weights.npz"

    def write_weights(self, out: BinaryIO) -> None:
        """The weights as the .npz the module names, into a file or a pipe."""
        write_float32_npz(out, self.weights)

    def write_module(self, folder: Path, outputs: list[str]) -> Path:
        """Write the module alone under ``folder`` (its weights to come: ``write_weights``); return the .mlir."""
        folder.mkdir(parents=True, exist_ok=True)
        args = ", ".join(f"{a}: {tensor(s)} loc(unknown)" for a, s in self.inputs)
        results = ", ".join(tensor(self.shapes[o]) for o in outputs)
        body = "\n    ".join(['%0 = "top.None"() : () -> none loc(#loc)', *self.lines])
        text = (
            f'module @{self.name} attributes {{module.weight_file = "{self.name}_top_weights.npz", '
            'module.platform = "LLM", module.state = "TOP_F32", module.chip = "ALL", module.top_run_mode = "STATIC"} {\n'
            f"  func.func @main({args}) -> ({results}) {{\n    {body}\n"
            f"    return {', '.join(outputs)} : {results} loc(#loc)\n  }} loc(#loc)\n}} loc(#loc)\n#loc = loc(unknown)\n"
            + "".join(f'#loc{i} = loc("{loc}")\n' for i, loc in enumerate(self.locs, 1))
        )
        path = folder / f"{self.name}.mlir"
        path.write_text(text)
        return path
