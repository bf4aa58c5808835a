"""A tensor in a checkpoint file, read only when asked for, through a memory map of its bytes.

Both checkpoint formats (safetensors, PyTorch's zip) come down to the same thing: a
file, a byte offset, a dtype, a shape and (for PyTorch views) strides. Reading maps
just those bytes and copies them out, so the map is gone when ``read`` returns: a
process that reads a checkpoint tensor by tensor holds only what it keeps, never the
file (a mapped page counts in RSS for as long as it stays mapped).

bfloat16 has no numpy dtype; its 16 bits are the top half of a float32, so it is read
as uint16 and widened exactly by a shift.
"""

from __future__ import annotations

import errno
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from opt_tpu_tui.errors import UserError

BFLOAT16 = "bfloat16"
# dtype name -> (storage dtype numpy reads, bytes per element)
FLOAT_DTYPES = {"float32": np.dtype("<f4"), "float16": np.dtype("<f2"), BFLOAT16: np.dtype("<u2")}


def widen_bfloat16(bits: np.ndarray) -> np.ndarray:
    """bfloat16 values given as their uint16 bits -> float32 (exact: bfloat16 is float32's top half)."""
    return (bits.astype(np.uint32, order="C") << 16).view(np.float32)


@dataclass(frozen=True)
class LazyTensor:
    """Where one tensor's elements are: ``strides`` in elements (None: C-contiguous)."""

    path: Path
    name: str
    dtype: str  # a key of FLOAT_DTYPES, or another type's name (refused when read)
    offset: int  # bytes from the start of the file to element 0
    shape: tuple[int, ...]
    strides: tuple[int, ...] | None = None

    @property
    def numel(self) -> int:
        """As a Python int: numpy's int64 product wraps (2^32 x 2^32 elements would be 0)."""
        return math.prod(self.shape)

    def extent(self) -> int:
        """Elements from element 0 to one past the last one the shape and strides reach."""
        if self.numel == 0:
            return 0
        if self.strides is None:
            return self.numel
        return 1 + sum((size - 1) * stride for size, stride in zip(self.shape, self.strides))

    def read(self, upcast: bool = True) -> np.ndarray:
        """A new C-contiguous array: float32 if ``upcast`` (and always for bfloat16), else the file's dtype."""
        if self.dtype not in FLOAT_DTYPES:
            raise UserError(f"{self.path}: tensor {self.name} has dtype {self.dtype}, expected a float type")
        stored = FLOAT_DTYPES[self.dtype]
        widen = self.dtype == BFLOAT16
        target = np.dtype(np.float32) if upcast or widen else stored
        if self.numel == 0:
            return np.zeros(self.shape, target)
        try:
            mapped = np.memmap(self.path, dtype=stored, mode="r", offset=self.offset, shape=(self.extent(),))
        except (OSError, ValueError) as error:
            if getattr(error, "errno", None) == errno.ENOMEM:  # no address space left to map it: out of memory
                raise MemoryError(f"mapping {self.name} of {self.path}") from None
            raise UserError(f"{self.path}: tensor {self.name} cannot be read ({error})") from None
        if self.strides is None:
            view = mapped.reshape(self.shape)
        else:
            byte_strides = tuple(s * stored.itemsize for s in self.strides)
            view = np.lib.stride_tricks.as_strided(mapped, self.shape, byte_strides, writeable=False)
        if widen:
            return widen_bfloat16(view)  # astype copies, so the map is released with ``mapped``
        return np.array(view, dtype=target, order="C")  # a copy, never the map itself
