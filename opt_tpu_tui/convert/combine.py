"""One bmodel from many, built as the graphs compile, in the disk the result takes.

``model_tool --combine`` needs every graph's bmodel on disk at once and writes the result
beside them: for a model whose graphs of a layer share their weights (a prefill chunk and
three decode windows), that is about five times the result's size in scratch disk at the
end of a conversion (some 20 GB for OPT-6.7B int4, before its working files). ``Combined``
does what model_tool does, a graph at a time, so that a graph's bmodel can be deleted as
soon as it compiled: it appends each binary the graph's flatbuffer points to (weights,
instructions, the kernel module) to one file, once per distinct content, as model_tool
stores identical blocks once, and keeps the graph's flatbuffer, a few kB, in memory with
its ``Binary`` fields moved to the new places. ``finish`` writes the bmodel: a new root
``Model`` table whose ``net`` vector points into the graphs' flatbuffers, copied whole
(flatbuffer offsets are relative, so a copied table stays valid), then the binaries,
moved from the end of their file a block at a time and the file cut short behind them,
so the data is on disk once, plus one block, even while the result is assembled.

A bmodel is a 64-byte header (magic, header size, flatbuffer size, binary size), the
flatbuffer (schema ``bmodel.fbs`` of tpu-mlir: see ``bmodel_info``), then the binary
every ``Binary {start, size}`` struct points into.
"""

from __future__ import annotations

import hashlib
import os
import struct
import threading
from pathlib import Path

from opt_tpu_tui.bmodel_info import HEADER, MAGIC, _Table

HEADER_SIZE = 64
ALIGN = 64  # each binary starts on this boundary in the result, as in model_tool's
COPY_BLOCK = 1 << 20  # the extra disk ``finish`` takes while it moves the binaries


def _vector(table: _Table, index: int) -> tuple[int, int] | None:
    """(position of the first element, count) of a vector field, or None when absent."""
    where = table._target(index)
    if where is None:
        return None
    return where + 4, struct.unpack_from("<I", table.buf, where)[0]


def binary_fields(model: _Table) -> list[int]:
    """Positions (in the flatbuffer) of every ``Binary`` struct a ``Model`` reaches, each once."""
    found: list[int] = []

    def field(table: _Table, index: int) -> None:
        where = table._field(index)
        if where is not None:
            found.append(where)

    def structs(table: _Table, index: int) -> None:  # a vector of Binary: 16 bytes each
        vector = _vector(table, index)
        if vector is not None:
            found.extend(vector[0] + 16 * k for k in range(vector[1]))

    def cmd_groups(table: _Table, index: int) -> None:
        for group in table.tables(index):
            field(group, 2)  # binary_bdc
            field(group, 3)  # binary_gdma

    for net in model.tables(4):
        for param in net.tables(3):
            coeff = param.table(4)
            if coeff is not None:
                field(coeff, 2)  # binary_coeff
            cmd_groups(param, 8)
            for index in (9, 11, 15, 19):  # net_profile, binary_ir, net_stat, tensor_loc
                field(param, index)
            for subnet in param.tables(12):
                cmd_groups(subnet, 1)
                for cpu in subnet.tables(2):
                    field(cpu, 1)  # binary_param
                    for const in cpu.tables(2):
                        field(const, 1)  # const_data
                for core in subnet.tables(14):
                    cmd_groups(core, 0)
                    for index in (1, 2, 3):  # sdma, hau, cdma commands
                        structs(core, index)
    for index in (6, 8):  # kernel_module, cpuop_module
        module = model.table(index)
        if module is not None:
            field(module, 1)
    field(model, 10)  # lib_backend
    return sorted(set(found))


class Graph:
    """One added bmodel: its flatbuffer (Binary fields moved to the combined binary) and where its nets are."""

    def __init__(self, flat: bytearray, nets: list[tuple[str, int]]) -> None:
        self.flat = flat
        self.nets = nets  # (name, position of the Net table in ``flat``)


class Combined:
    """The bmodel being combined: ``add`` each compiled graph (then delete it), ``finish`` once."""

    def __init__(self, binary: Path) -> None:
        self.binary_path = binary
        self.binary = binary.open("wb")
        self.size = 0
        self.blocks: dict[tuple[bytes, int], int] = {}  # (sha256, size) -> start
        self.graphs: list[Graph] = []
        self.lock = threading.Lock()  # compile workers add at once

    def add(self, bmodel: Path) -> None:
        """Append ``bmodel``'s nets and the binaries they need (each distinct one once)."""
        with bmodel.open("rb") as source:
            magic, header_size, flat_size, _ = HEADER.unpack(source.read(HEADER.size))
            if magic != MAGIC:
                raise ValueError(f"{bmodel}: not a bmodel")
            source.seek(header_size)
            flat = bytearray(source.read(flat_size))
            base = header_size + flat_size
            root = _Table(bytes(flat), struct.unpack_from("<I", flat, 0)[0])
            with self.lock:
                for where in binary_fields(root):
                    start, size = struct.unpack_from("<QQ", flat, where)
                    if size:
                        struct.pack_into("<Q", flat, where, self._store(source, base + start, size))
                nets = [(net.string(0), net.pos) for net in root.tables(4)]
                if self.graphs:  # the result's root names the first graph's type, version, time and chip
                    for index in range(4):  # this graph's copies of them are unreachable: blanked, not left to find
                        where = root._target(index)
                        if where is not None:
                            length = struct.unpack_from("<I", flat, where)[0]
                            flat[where + 4 : where + 4 + length] = bytes(length)
                self.graphs.append(Graph(flat, nets))

    def _store(self, source, offset: int, size: int) -> int:  # type: ignore[no-untyped-def]
        """Where ``size`` bytes at ``offset`` of ``source`` are in the combined binary, appended if new."""
        digest = hashlib.sha256()
        source.seek(offset)
        left = size
        while left:
            block = source.read(min(left, COPY_BLOCK))
            if not block:
                raise ValueError("a bmodel's binary is shorter than its flatbuffer says")
            digest.update(block)
            left -= len(block)
        known = self.blocks.get((digest.digest(), size))
        if known is not None:
            return known
        start = -self.size % ALIGN + self.size
        self.binary.write(bytes(start - self.size))
        source.seek(offset)
        left = size
        while left:
            block = source.read(min(left, COPY_BLOCK))
            self.binary.write(block)
            left -= len(block)
        self.size = start + size
        self.blocks[(digest.digest(), size)] = start
        return start

    def close(self) -> None:
        """Stop writing the binary (a failed or interrupted conversion: its folder is removed after)."""
        with self.lock:
            self.binary.close()

    def finish(self, out: Path, order: list[str]) -> None:
        """Write the bmodel to ``out``, nets in ``order`` (every added net, each once); the binary file is consumed."""
        self.binary.close()
        where = {name: (k, pos) for k, graph in enumerate(self.graphs) for name, pos in graph.nets}
        if sorted(where) != sorted(order) or len(where) != sum(len(g.nets) for g in self.graphs):
            raise ValueError("the nets added and the nets asked for differ, or a net name repeats")
        flat = self._flatbuffer([where[name] for name in order])
        header = bytearray(HEADER_SIZE)
        HEADER.pack_into(header, 0, MAGIC, HEADER_SIZE, len(flat), self.size)
        with out.open("wb") as result:
            result.write(header)
            result.write(flat)
            self._move_binary(result, HEADER_SIZE + len(flat))
        self.binary_path.unlink()

    def _move_binary(self, result, at: int) -> None:  # type: ignore[no-untyped-def]
        """Copy the binary file to ``at`` in ``result`` from its end, cutting it short behind each block."""
        with self.binary_path.open("r+b") as binary:
            end = self.size
            while end > 0:
                start = max(0, end - COPY_BLOCK)
                binary.seek(start)
                block = binary.read(end - start)
                result.seek(at + start)
                result.write(block)
                result.flush()
                os.ftruncate(binary.fileno(), start)  # no sync: a crash loses the build folder anyway
                end = start

    def _flatbuffer(self, nets: list[tuple[int, int]]) -> bytearray:
        """A ``Model`` root whose nets are ``nets`` ((graph, Net position)), the graphs' flatbuffers after it."""
        first = _Table(bytes(self.graphs[0].flat), struct.unpack_from("<I", self.graphs[0].flat, 0)[0])
        vtable_at, table_at = 8, 40  # vtable: 4 + 2 * 11 fields = 26 bytes; table 8-aligned after it
        table_size = 64
        vector_at = table_at + table_size
        blocks_at = vector_at + 4 + 4 * len(nets)
        starts = []
        for graph in self.graphs:
            blocks_at += -blocks_at % 16
            starts.append(blocks_at)
            blocks_at += len(graph.flat)
        flat = bytearray(blocks_at + -blocks_at % 16)
        for graph, start in zip(self.graphs, starts):
            flat[start : start + len(graph.flat)] = graph.flat
        struct.pack_into("<I", flat, 0, table_at)
        # fields: type, version, time, chip, net, neuron_size, kernel_module, device_num, cpuop_module,
        # bmodel_type, lib_backend -> their offsets in the table (0: absent)
        layout = {0: 4, 1: 8, 2: 12, 3: 16, 4: 20, 6: 24, 7: 28, 8: 32, 9: 36, 5: 40, 10: 48}
        present = {index: offset for index, offset in layout.items() if index == 4 or first._field(index) is not None}
        struct.pack_into("<HH", flat, vtable_at, 4 + 2 * 11, table_size)
        for index in range(11):
            struct.pack_into("<H", flat, vtable_at + 4 + 2 * index, present.get(index, 0))
        struct.pack_into("<i", flat, table_at, table_at - vtable_at)

        def point(at: int, target: int) -> None:  # a uoffset at ``at`` to ``target``, which lies after it
            struct.pack_into("<I", flat, at, target - at)

        for index in (0, 1, 2, 3, 6, 8):  # strings and tables of the first graph's Model
            if index in present:
                point(table_at + layout[index], starts[0] + first._target(index))  # type: ignore[operator]
        point(table_at + layout[4], vector_at)
        neuron = 0
        for graph in self.graphs:
            model = _Table(bytes(graph.flat), struct.unpack_from("<I", graph.flat, 0)[0])
            neuron = max(neuron, model.scalar(5, "Q"))
        if 5 in present:
            struct.pack_into("<Q", flat, table_at + layout[5], neuron)
        for index, fmt in ((7, "I"), (9, "I")):
            if index in present:
                struct.pack_into("<" + fmt, flat, table_at + layout[index], first.scalar(index, fmt))
        if 10 in present:
            source = first._field(10)
            flat[table_at + 48 : table_at + 64] = self.graphs[0].flat[source : source + 16]  # type: ignore[index]
        struct.pack_into("<I", flat, vector_at, len(nets))
        for k, (graph, pos) in enumerate(nets):
            point(vector_at + 4 + 4 * k, starts[graph] + pos)
        return flat
