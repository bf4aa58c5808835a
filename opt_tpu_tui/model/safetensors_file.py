"""The tensors of a safetensors file, from its header alone: each one read later, on its own.

The format is an 8-byte little-endian header length, a JSON header mapping each name to
its dtype, shape and byte range in the data that follows, then the data. It is parsed
here rather than with ``safetensors.safe_open(framework="numpy")``, which cannot return
bfloat16 (numpy has no such dtype), so that every dtype goes through ``LazyTensor``.

The header is held to the rules the ``safetensors`` library applies (``Metadata::validate``),
so a file it refuses is refused here too, in one line: the tensors' byte ranges, in
order, tile the data region exactly (no overlap, no gap, nothing after), and each range
is the size of its shape and dtype, with the element count as a Python int (no wrap at
2^64). Stricter than the library in two ways, both cheap: a name given twice in the JSON
is refused outright (the library keeps the last, and only the tiling rule catches a
name re-pointed at another tensor's bytes), and the number of entries is bounded, so a
header of a million empty tensors is refused while it is parsed, not after seconds
and a gigabyte of dicts (the library accepts that one).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from opt_tpu_tui.errors import UserError
from opt_tpu_tui.model.lazy_tensor import FLOAT_DTYPES, LazyTensor

MAX_HEADER = 100_000_000  # bytes: safetensors' own limit (MAX_HEADER_SIZE)
MAX_ENTRIES = 100_000  # JSON objects in a header; OPT-175B has about 1,550 tensors
DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def read_safetensors(path: Path) -> dict[str, LazyTensor]:
    """Every tensor of ``path`` by its name in the file, checked to lie inside it; no data is read."""

    def bad(reason: str) -> UserError:
        return UserError(f"{path}: not a readable safetensors file ({reason})")

    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            prefix = handle.read(8)
            length = int.from_bytes(prefix, "little") if len(prefix) == 8 else -1
            if not 0 < length <= min(MAX_HEADER, size - 8):
                raise bad(f"header length {length} does not fit the file's {size} bytes")
            text = handle.read(length)
    except OSError as error:
        raise bad(str(error.strerror or error)) from None
    try:
        header = parse_header(text.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise bad(f"header: {error}") from None
    except HeaderError as error:
        raise bad(str(error)) from None
    if not isinstance(header, dict):
        raise bad("header is not a JSON object")
    data_start, data_size = 8 + length, size - 8 - length
    tensors = {}
    ranges = []  # (begin, end, name) of every tensor, to check that they tile the data
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict):
            raise bad(f"tensor {name}: not an object")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if not isinstance(dtype, str) or not isinstance(shape, list) or not all(map(_is_count, shape)):
            raise bad(f"tensor {name}: no dtype and shape")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_is_count, offsets))):
            raise bad(f"tensor {name}: no data_offsets")
        begin, end = offsets
        if not begin <= end <= data_size:
            raise bad(f"tensor {name}: bytes {begin}..{end} lie outside the file's {data_size} bytes of data")
        tensor = LazyTensor(path, name, DTYPES.get(dtype, dtype), data_start + begin, tuple(shape))
        if tensor.dtype in FLOAT_DTYPES and end - begin != tensor.numel * FLOAT_DTYPES[tensor.dtype].itemsize:
            raise bad(f"tensor {name}: {end - begin} bytes for {tensor.numel} {tensor.dtype} elements")
        tensors[name] = tensor
        ranges.append((begin, end, name))
    check_tiling(ranges, data_size, bad)
    return tensors


class HeaderError(ValueError):
    """A header the parser refuses, with the reason."""


def parse_header(text: str) -> Any:
    """The header's JSON, refusing a key given twice in one object and more than MAX_ENTRIES objects.

    The objects are counted as the parser builds them (innermost first), so a header of
    endless entries stops at the bound instead of being built whole.
    """
    built = 0

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        nonlocal built
        built += 1
        if built > MAX_ENTRIES + 1:  # the entries and the header itself
            raise HeaderError(f"header: more than {MAX_ENTRIES} entries, far more than a model's tensors")
        result: dict[str, Any] = {}
        for key, value in items:
            if key in result:
                raise HeaderError(f"header: {key!r:.80} is given twice")
            result[key] = value
        return result

    try:
        return json.loads(text, object_pairs_hook=pairs)
    except HeaderError:
        raise
    except RecursionError:
        raise HeaderError("header: not valid JSON (nested too deeply)") from None
    except ValueError as error:  # JSONDecodeError, and int() refusing thousands of digits
        raise HeaderError(f"header: not valid JSON ({error})") from None


def check_tiling(ranges: list[tuple[int, int, str]], data_size: int, bad: Callable[[str], UserError]) -> None:
    """Refuse byte ranges that overlap, leave a gap or stop short of the data's end, as safetensors does."""
    end_so_far, previous = 0, None
    for begin, end, name in sorted(ranges):
        if begin != end_so_far:
            where = f"tensor {previous}'s end at {end_so_far}" if previous else "the data's start"
            raise bad(f"tensor {name}: bytes {begin}..{end} do not follow on from {where} (overlap or gap)")
        end_so_far, previous = end, name
    if end_so_far != data_size:
        raise bad(f"the tensors cover {end_so_far} of the file's {data_size} bytes of data")
