"""A converted model directory: what ``opt-tpu-tui convert`` writes and the TPU backends read.

It holds ``model.bmodel`` (every net of the model, for BM1684X), ``manifest.json`` (the
OPT config, context, precision and net names the bmodel was built with), the token and
position embeddings as ``.npy`` files for the host-side lookup, and the tokenizer's
``vocab.json`` + ``merges.txt``. The manifest is written last, so its presence marks a
complete conversion.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from opt_tpu_tui.errors import UserError, is_plain_name, read_json_object
from opt_tpu_tui.model.config import POSITION_OFFSET, OPTConfig

MANIFEST = "manifest.json"
BMODEL = "model.bmodel"
FORMAT = 2  # 2: prefill in chunks over the cache, decode nets per window (chunk, windows)
CHIP = "BM1684X"
MODES = {"f16": "", "int8": "W8", "int4": "W4"}  # weight precision -> TPU-MLIR's weight-only prefix
ACTIVATIONS = ("f16", "bf16")
# int8/int4 quantisation group along K. tpu-mlir's cost model predicts groups of 128 about 3 %
# faster than 64 (fewer scale bytes per weight; bench/tpu_sweep.py); the weights lose a little
# more precision to them (docs/tpu.md's precision table), and --group-size 64 keeps the old choice.
DEFAULT_GROUP_SIZE = 128


def quantization(mode: str, activations: str) -> str:
    """TPU-MLIR's mode name: weights then activations, "W4F16" for int4 weights with float16 activations."""
    return MODES[mode] + activations.upper()


def prefill_net(layer: int) -> str:
    return f"block_{layer}"


def decode_net(layer: int, window: int) -> str:
    return f"block_cache_{layer}_{window}"


def decode_windows(context: int, most: int = 4, smallest: int = 128) -> list[int]:
    """The cache sizes decode nets are compiled for: C, C/2, C/4, ... (at most ``most``, none under ``smallest``).

    A decode step reads every slot its net attends over, so at position p it runs the
    net of the smallest window holding p slots: at 6.7B int4 with C = 2048, a short
    chat reads 0.13 GB of K/V per token instead of 1.07 GB, on top of 3.6 GB of weights.
    The windows share their weights in the bmodel; they cost compile time.
    """
    windows = [context]
    while len(windows) < most and windows[0] % 2 == 0 and windows[0] // 2 >= smallest:
        windows.insert(0, windows[0] // 2)
    return windows


LM_HEAD = "lm_head"
# The greedy head: the same weights ending in an argmax, so a greedy reply fetches a token id per
# step, not the logits. Conversions before it lack it; the backend then takes the logits.
LM_HEAD_TOP1 = "lm_head_top1"


@dataclass(frozen=True)
class Manifest:
    config: OPTConfig
    mode: str  # f16, int8, int4: the weights
    activations: str  # f16, bf16
    group_size: int  # quantisation group along K; 0 for f16
    context: int  # the static sequence length every net was compiled for
    chunk: int  # prompt tokens one prefill launch runs
    windows: tuple[int, ...]  # the cache sizes of the decode nets, ascending, the last one the context
    source: str  # the Hugging Face directory's name, shown as the model's name
    format: int = FORMAT
    chip: str = CHIP

    def to_json(self, files: Sequence[str] = ()) -> str:
        """The manifest as convert writes it; ``files``: what the conversion wrote, removed when it is replaced."""
        raw = asdict(self)
        raw["config"] = self.config.to_dict()
        raw["quantization"] = quantization(self.mode, self.activations)
        raw["nets"] = {
            "prefill": [prefill_net(i) for i in range(self.config.num_hidden_layers)],
            "decode": [decode_net(i, w) for i in range(self.config.num_hidden_layers) for w in self.windows],
            "lm_head": LM_HEAD,
            "lm_head_top1": LM_HEAD_TOP1,
        }
        raw["files"] = sorted(files)
        return json.dumps(raw, indent=2) + "\n"

    @classmethod
    def load(cls, model_dir: Path) -> Manifest:
        path = Path(model_dir) / MANIFEST
        raw = read_json_object(path, "convert the model with `opt-tpu-tui convert`")
        try:
            if raw["format"] != FORMAT:
                raise UserError(f"{path}: format {raw['format']!r}, this version reads {FORMAT}; convert the model again")
            if not isinstance(raw["config"], dict):
                raise KeyError("config")
            manifest = cls(
                config=OPTConfig.from_dict(raw["config"], source=f"{path} config"),
                mode=raw["mode"], activations=raw["activations"], group_size=raw["group_size"],
                context=raw["context"], chunk=raw["chunk"], windows=tuple(raw["windows"]), source=raw["source"],
                chip=raw["chip"],
            )  # fmt: skip
        except (KeyError, TypeError) as error:
            raise UserError(f"{path}: not a manifest written by `opt-tpu-tui convert` ({error!r} is wrong)") from None
        if manifest.mode not in MODES or manifest.activations not in ACTIVATIONS:
            raise UserError(f"{path}: unknown precision {manifest.mode!r} / {manifest.activations!r}")
        if not isinstance(manifest.context, int) or not 2 <= manifest.context <= manifest.config.max_position_embeddings:
            raise UserError(f"{path}: context {manifest.context!r} is out of range for this model")
        if not isinstance(manifest.chunk, int) or not 1 <= manifest.chunk <= manifest.context:
            raise UserError(f"{path}: chunk {manifest.chunk!r} is out of range for context {manifest.context}")
        windows = manifest.windows
        if not all(isinstance(w, int) and 0 < w for w in windows) or list(windows) != sorted(set(windows)) or (
            windows[-1:] != (manifest.context,)
        ):
            raise UserError(f"{path}: decode windows {list(windows)} must rise to the context {manifest.context}")
        return manifest


def conversion_files(model_dir: Path) -> list[str] | None:
    """The files an earlier ``convert`` wrote into ``model_dir``, from its manifest; None if it holds no conversion.

    A conversion is recognised by its own manifest (the net names and chip convert
    writes), not by the mere name manifest.json, which other tools use too. Only plain
    names inside the folder count; a manifest from before ``files`` was written gets
    the names convert has always used.
    """
    path = Path(model_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        raw = read_json_object(path, "")
    except UserError:
        return None
    if not isinstance(raw.get("nets"), dict) or raw.get("chip") != CHIP or not isinstance(raw.get("format"), int):
        return None
    files = raw.get("files", OUTPUT_FILES)
    if not isinstance(files, list) or not all(isinstance(name, str) and is_plain_name(name) for name in files):
        return None
    return [MANIFEST, *(name for name in files if name != MANIFEST)]


def is_converted(model_dir: Path) -> bool:
    """Whether ``model_dir`` is a (complete) converted model directory."""
    return (Path(model_dir) / MANIFEST).is_file()


def bmodel_description(path: Path) -> bytes:
    """The start of a bmodel's flatbuffer (chip, net names, shapes), or b"" if ``path`` is not a readable bmodel.

    A bmodel starts with a 16-byte header (magic 0xFF55AAEE, header size, flatbuffer size);
    the flatbuffer holds names as length-prefixed, NUL-terminated strings.
    """
    try:
        with open(path, "rb") as handle:
            head = handle.read(16)
            if len(head) < 16 or int.from_bytes(head[:4], "little") != 0xFF55AAEE:
                return b""
            size, flat = int.from_bytes(head[4:8], "little"), int.from_bytes(head[8:12], "little")
            handle.seek(size)
            return handle.read(min(flat, 1 << 20))
    except OSError:
        return b""


def names_string(data: bytes, name: str) -> bool:
    """Whether a bmodel's flatbuffer ``data`` holds the string ``name`` (a net's name, say)."""
    raw = name.encode()
    return len(raw).to_bytes(4, "little") + raw + b"\x00" in data


def bmodel_chip(path: Path) -> str | None:
    """The chip a bmodel was compiled for, read from its header, or None if it cannot be told."""
    found = re.search(rb"[\x04-\x0c]\x00\x00\x00((?:BM|CV|SG|MARS|SGTPU)[0-9A-Z]{1,8})\x00", bmodel_description(path))
    return found.group(1).decode() if found else None


class HostEmbedding:
    """Token and position embeddings looked up on the host (memory-mapped float16 tables)."""

    TOKENS, POSITIONS, PROJECT_IN = "embed_tokens.npy", "embed_positions.npy", "project_in.npy"

    def __init__(self, model_dir: Path, config: OPTConfig, context: int) -> None:
        h, e = config.hidden_size, config.word_embed_proj_dim
        self.tokens = self._table(model_dir / self.TOKENS, (config.vocab_size, e))
        self.positions = self._table(model_dir / self.POSITIONS, (context + POSITION_OFFSET, h))
        self.project_in = self._table(model_dir / self.PROJECT_IN, (h, e)) if config.has_projections else None

    @staticmethod
    def _table(path: Path, shape: tuple[int, ...]) -> np.ndarray:
        try:
            table = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as error:
            raise UserError(f"{path}: missing or unreadable ({error}); convert the model again") from None
        if table.shape != shape:
            raise UserError(f"{path}: shape {list(table.shape)}, but manifest.json implies {list(shape)}")
        return table

    def __call__(self, ids: list[int], start: int) -> np.ndarray:
        """float32 [n, h]: the embeddings of ``ids`` at positions start..start+n-1."""
        x = self.tokens[ids].astype(np.float32)
        if self.project_in is not None:
            x = x @ self.project_in.T.astype(np.float32)
        x += self.positions[start + POSITION_OFFSET : start + POSITION_OFFSET + len(ids)]
        return x

    @classmethod
    def write(cls, folder: Path, tokens: np.ndarray, positions: np.ndarray, project_in: np.ndarray | None) -> None:
        np.save(folder / cls.TOKENS, tokens.astype(np.float16, copy=False))  # OPT-6.7B's is 412 MB in float16
        np.save(folder / cls.POSITIONS, positions.astype(np.float16, copy=False))
        if project_in is not None:
            np.save(folder / cls.PROJECT_IN, project_in.astype(np.float16, copy=False))


TOKENIZER_FILES = ("vocab.json", "merges.txt")
# What convert has always written; a manifest's own ``files`` list is preferred.
OUTPUT_FILES = [BMODEL, HostEmbedding.TOKENS, HostEmbedding.POSITIONS, HostEmbedding.PROJECT_IN, *TOKENIZER_FILES]
