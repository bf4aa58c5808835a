"""The tensors of a safetensors file, from its header alone: each one read later, on its own.

The format is an 8-byte little-endian header length, a JSON header mapping each name to
its dtype, shape and byte range in the data that follows, then the data. It is parsed
here rather than with ``safetensors.safe_open(framework="numpy")``, which cannot return
bfloat16 (numpy has no such dtype), so that every dtype goes through ``LazyTensor``.
"""

from __future__ import annotations

from pathlib import Path

from opt_tpu_tui.errors import UserError, parse_json
from opt_tpu_tui.model.lazy_tensor import FLOAT_DTYPES, LazyTensor

MAX_HEADER = 100 * 2**20  # safetensors' own limit
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
        header = parse_json(text.decode("utf-8"))
    except (UnicodeDecodeError, UserError) as error:
        raise bad(f"header: {error}") from None
    if not isinstance(header, dict):
        raise bad("header is not a JSON object")
    data_start, data_size = 8 + length, size - 8 - length
    tensors = {}
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
    return tensors
