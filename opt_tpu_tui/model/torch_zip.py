"""PyTorch's checkpoint format (``torch.save`` since 1.6), read without torch and without running its pickle.

A ``pytorch_model.bin`` is a zip archive: ``<name>/data.pkl`` pickles the state dict,
and each tensor storage is a separate, uncompressed entry ``<name>/data/<key>``. A
pickle can call any importable function while it loads (``os.system`` included), so it
is loaded by an unpickler that knows exactly the globals ``torch.save`` writes for a
state dict (as checked against torch 2.13 with pickletools): ``collections.OrderedDict``,
``torch._utils._rebuild_tensor_v2`` and the storage types (``torch.FloatStorage``, …,
and ``torch.storage.UntypedStorage`` for raw bytes). They resolve to local stand-ins,
so not even torch's own code runs; any other global is refused by ``find_class``,
before anything it names is called. Storages are the pickle's persistent ids
(``('storage', type, key, location, numel)``); tensors become ``LazyTensor``s pointing
into the zip entries, whose bytes sit in the archive as they are in memory.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opt_tpu_tui.errors import UserError, is_plain_name
from opt_tpu_tui.model.lazy_tensor import LazyTensor

MAX_PICKLE = 64 * 2**20  # a state dict's pickle is kilobytes (OPT-66B's: ~100 KB)
LEGACY_HINT = (
    "re-save it in the current format (torch 1.6 or newer): "
    "python -c \"import torch; torch.save(torch.load('{p}', weights_only=True), '{p}')\""
)


@dataclass(frozen=True)
class StorageType:
    """What a ``torch.*Storage`` global stands for here: the element type of the storage."""

    dtype: str
    itemsize: int


STORAGE_TYPES = {
    "DoubleStorage": StorageType("float64", 8),
    "FloatStorage": StorageType("float32", 4),
    "HalfStorage": StorageType("float16", 2),
    "BFloat16Storage": StorageType("bfloat16", 2),
    "LongStorage": StorageType("int64", 8),
    "IntStorage": StorageType("int32", 4),
    "ShortStorage": StorageType("int16", 2),
    "CharStorage": StorageType("int8", 1),
    "ByteStorage": StorageType("uint8", 1),
    "BoolStorage": StorageType("bool", 1),
}
UNTYPED = StorageType("uint8", 1)  # torch.load reads an UntypedStorage as bytes


@dataclass(frozen=True)
class Storage:
    key: str
    type: StorageType
    numel: int


@dataclass(frozen=True)
class TensorRecord:
    """A tensor as the pickle describes it: a view (offset, shape, strides in elements) of a storage."""

    storage: Storage
    offset: int
    shape: tuple[int, ...]
    strides: tuple[int, ...]


def _counts(value: object) -> bool:
    return isinstance(value, tuple) and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)


def rebuild_tensor(
    storage: object, offset: object, shape: object, strides: object, requires_grad: object = False,
    backward_hooks: object = None, metadata: object = None,
) -> TensorRecord:  # fmt: skip
    """Stands in for ``torch._utils._rebuild_tensor_v2``; the last three arguments do not matter for weights."""
    record = TensorRecord(storage, offset, shape, strides)  # type: ignore[arg-type]
    if not well_formed(record):
        raise pickle.UnpicklingError("a tensor whose storage, offset, shape or strides are malformed")
    return record


def well_formed(record: object) -> bool:
    """Whether ``record`` is a TensorRecord of a Storage with counts where counts belong: checked when
    the tensor is built and again after loading, since a pickle's BUILD can rewrite an object's fields."""
    if not isinstance(record, TensorRecord) or not isinstance(record.storage, Storage):
        return False
    storage = record.storage
    return (
        isinstance(storage.key, str) and isinstance(storage.type, StorageType) and _counts((storage.numel,))
        and _counts((record.offset,)) and _counts(record.shape) and _counts(record.strides)
        and len(record.shape) == len(record.strides)
    )  # fmt: skip


ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): rebuild_tensor,
    ("torch", "UntypedStorage"): UNTYPED,
    ("torch.storage", "UntypedStorage"): UNTYPED,
    **{("torch", name): kind for name, kind in STORAGE_TYPES.items()},
}


class RefusedGlobal(pickle.UnpicklingError):
    pass


class StateDictUnpickler(pickle.Unpickler):
    """Resolves only ``ALLOWED`` globals, to stand-ins; storages come back as ``Storage``."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED[module, name]
        except (KeyError, TypeError):
            raise RefusedGlobal(f"{module}.{name}") from None

    def persistent_load(self, pid: Any) -> Storage:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"an unknown persistent id {pid!r:.60}")
        _, kind, key, _location, numel = pid
        if not isinstance(kind, StorageType) or not isinstance(key, str) or not _counts((numel,)):
            raise pickle.UnpicklingError(f"a malformed storage id {pid!r:.60}")
        return Storage(key, kind, numel)


def data_offset(path: Path, info: zipfile.ZipInfo) -> int:
    """Where an entry's bytes start in the file: after its local header, whose extra field may
    differ from the central directory's."""
    with open(path, "rb") as handle:
        handle.seek(info.header_offset)
        header = handle.read(30)
    if len(header) != 30 or header[:4] != b"PK\x03\x04":
        raise UserError(f"{path}: entry {info.filename} has no valid local header; the file is damaged")
    name_length, extra_length = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_length + extra_length


def read_torch_zip(path: Path) -> dict[str, LazyTensor]:
    """Every tensor of the state dict in ``path``, by name; only the pickle is read, not the data."""
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as handle:
            start = handle.read(2)
        if start[:1] == b"\x80" or _is_tar(path):  # a pickled magic number, or torch's oldest (tar) format
            raise UserError(f"{path}: the legacy PyTorch format, which is not read; " + LEGACY_HINT.format(p=path))
        raise UserError(f"{path}: not a PyTorch checkpoint (neither a zip archive nor the legacy format)")
    try:
        with zipfile.ZipFile(path) as archive:
            return _read_archive(path, archive)
    except (zipfile.BadZipFile, OSError) as error:
        raise UserError(f"{path}: not a readable PyTorch checkpoint ({error})") from None


def _is_tar(path: Path) -> bool:
    with open(path, "rb") as handle:
        handle.seek(257)
        return handle.read(5) == b"ustar"


def _read_archive(path: Path, archive: zipfile.ZipFile) -> dict[str, LazyTensor]:
    pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pickles) != 1:
        raise UserError(f"{path}: a zip archive, but not one written by torch.save (no single <name>/data.pkl)")
    prefix = pickles[0][: -len("data.pkl")]
    if prefix + "byteorder" in archive.namelist() and archive.read(prefix + "byteorder") != b"little":
        raise UserError(f"{path}: saved on a big-endian machine, which is not read; re-save it on a little-endian one")
    info = archive.getinfo(pickles[0])
    if info.file_size > MAX_PICKLE:
        raise UserError(f"{path}: its pickle is {info.file_size} bytes, far more than a state dict's")
    state = unpickle_state_dict(path, archive.read(info))
    entries: dict[str, tuple[int, int]] = {}  # storage key -> (data offset, bytes)
    tensors = {}
    for name, record in state.items():
        storage = record.storage
        if storage.key not in entries:
            entries[storage.key] = _storage_entry(path, archive, prefix, storage)
        start, _ = entries[storage.key]
        tensor = LazyTensor(
            path, name, storage.type.dtype, start + record.offset * storage.type.itemsize, record.shape, record.strides
        )
        if tensor.numel and record.offset + tensor.extent() > storage.numel:
            raise UserError(f"{path}: tensor {name} reaches past the end of its storage; the file is damaged")
        tensors[name] = tensor
    return tensors


def unpickle_state_dict(path: Path, data: bytes) -> dict[str, TensorRecord]:
    """The pickled state dict (names -> tensors), or a one-line UserError; refused globals never run."""
    try:
        state = StateDictUnpickler(io.BytesIO(data)).load()
    except RefusedGlobal as error:
        raise UserError(
            f"{path}: refused: its pickle calls {error}, which a saved state dict never does "
            "(a pickle can run any code, so only tensors are read)"
        ) from None
    except (pickle.UnpicklingError, TypeError, ValueError, EOFError, AttributeError, IndexError, KeyError,
            RecursionError, MemoryError) as error:  # fmt: skip
        raise UserError(f"{path}: not a state dict this reader understands ({type(error).__name__}: {error})") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and well_formed(v) for k, v in state.items()):
        raise UserError(f"{path}: its pickle is not a state dict of named tensors")
    return state


def _storage_entry(path: Path, archive: zipfile.ZipFile, prefix: str, storage: Storage) -> tuple[int, int]:
    """(offset in the file, bytes) of a storage's zip entry, checked to be stored as is and big enough."""
    if not is_plain_name(storage.key):
        raise UserError(f"{path}: storage key {storage.key!r:.40} is not a plain name")
    try:
        info = archive.getinfo(f"{prefix}data/{storage.key}")
    except KeyError:
        raise UserError(f"{path}: storage {storage.key} is missing from the archive") from None
    if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 1:
        raise UserError(f"{path}: storage {storage.key} is compressed or encrypted; torch.save writes it stored")
    size = storage.numel * storage.type.itemsize
    if info.file_size < size:
        raise UserError(f"{path}: storage {storage.key} holds {info.file_size} bytes, its tensors need {size}")
    return data_offset(path, info), size
