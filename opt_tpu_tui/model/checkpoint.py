"""Load an OPT checkpoint as Hugging Face ships it: safetensors or PyTorch's ``pytorch_model.bin``,
single file or sharded with an index, float32, float16 or bfloat16, read without torch.

Every OPT size names its tensors a little differently (``model.decoder.*`` for
125m/1.3b/2.7b, ``decoder.*`` for 350m and 6.7b+, with or without ``lm_head``),
so names are normalised to ``decoder.*`` and the tied lm_head is filled in from
the token embedding. Absent biases and LayerNorm affines become zeros and ones,
so the math downstream has a single form.
"""

from __future__ import annotations

import collections.abc
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from opt_tpu_tui.errors import UserError, is_plain_name, read_json_object
from opt_tpu_tui.model.config import POSITION_OFFSET, OPTConfig
from opt_tpu_tui.model.lazy_tensor import FLOAT_DTYPES, LazyTensor
from opt_tpu_tui.model.safetensors_file import read_safetensors
from opt_tpu_tui.model.torch_zip import read_torch_zip

Array = np.ndarray


@dataclass
class LayerWeights:
    """One decoder layer; matrices are [out_features, in_features] as in torch."""

    q_w: Array
    q_b: Array
    k_w: Array
    k_b: Array
    v_w: Array
    v_b: Array
    o_w: Array
    o_b: Array
    ln1_w: Array  # self_attn_layer_norm
    ln1_b: Array
    fc1_w: Array
    fc1_b: Array
    fc2_w: Array
    fc2_b: Array
    ln2_w: Array  # final_layer_norm of the layer
    ln2_b: Array


@dataclass
class OPTWeights:
    config: OPTConfig
    embed_tokens: Array  # [vocab, word_embed_proj_dim]
    embed_positions: Array  # [max_positions + 2, hidden]
    layers: Sequence[LayerWeights]  # CheckpointLayers when loaded: each read when indexed
    lm_head: Array  # [vocab, word_embed_proj_dim]; often the same array as embed_tokens
    project_in: Array | None = None  # [hidden, word_embed_proj_dim]
    project_out: Array | None = None  # [word_embed_proj_dim, hidden]
    final_ln_w: Array | None = None
    final_ln_b: Array | None = None


def expected_shapes(config: OPTConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor name (normalised) a checkpoint of this config may hold, with its shape."""
    h, e, f, v = config.hidden_size, config.word_embed_proj_dim, config.ffn_dim, config.vocab_size
    shapes: dict[str, tuple[int, ...]] = {
        "decoder.embed_tokens.weight": (v, e),
        "decoder.embed_positions.weight": (config.max_position_embeddings + POSITION_OFFSET, h),
        "lm_head.weight": (v, e),
    }
    if config.has_projections:
        shapes["decoder.project_in.weight"] = (h, e)
        shapes["decoder.project_out.weight"] = (e, h)
    if config.has_final_layer_norm and config.layer_norm_elementwise_affine:
        shapes["decoder.final_layer_norm.weight"] = (h,)
        shapes["decoder.final_layer_norm.bias"] = (h,)
    for i in range(config.num_hidden_layers):
        p = f"decoder.layers.{i}."
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes[f"{p}self_attn.{name}.weight"] = (h, h)
            if config.enable_bias:
                shapes[f"{p}self_attn.{name}.bias"] = (h,)
        shapes[f"{p}fc1.weight"] = (f, h)
        shapes[f"{p}fc2.weight"] = (h, f)
        if config.enable_bias:
            shapes[f"{p}fc1.bias"] = (f,)
            shapes[f"{p}fc2.bias"] = (h,)
        if config.layer_norm_elementwise_affine:
            for ln in ("self_attn_layer_norm", "final_layer_norm"):
                shapes[f"{p}{ln}.weight"] = (h,)
                shapes[f"{p}{ln}.bias"] = (h,)
    return shapes


LAYOUTS = (  # (single file, index of shards), in the order they are looked for
    ("model.safetensors", "model.safetensors.index.json"),
    ("pytorch_model.bin", "pytorch_model.bin.index.json"),
)
LFS_POINTER = b"version https://git-lfs.github.com/spec/v1"


def weight_files(model_dir: Path) -> list[Path]:
    """The weight files of a model directory (safetensors first, then PyTorch's), or a UserError saying what is wrong."""
    if not model_dir.is_dir():
        raise UserError(f"{model_dir}: no such model directory")
    for single_name, index_name in LAYOUTS:
        single, index = model_dir / single_name, model_dir / index_name
        if single.is_file():
            return [check_not_lfs_pointer(single)]
        if index.is_file():
            return [check_not_lfs_pointer(p) for p in shard_files(index)]
    raise UserError(
        f"{model_dir}: no model.safetensors or pytorch_model.bin found (nor a sharded *.index.json of either)"
    )


def shard_files(index: Path) -> list[Path]:
    """The shards an index's weight_map names, each checked to be a file beside it."""
    weight_map = read_json_object(index, "").get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(s, str) for s in weight_map.values()):
        raise UserError(f"{index}: not a valid checkpoint index (no weight_map of tensor -> file)")
    if not weight_map:
        raise UserError(f"{index}: its weight_map is empty, so it names no weight files (an incomplete download?)")
    shards = sorted(set(weight_map.values()))
    outside = [s for s in shards if not is_plain_name(s)]
    if outside:
        raise UserError(f"{index}: shard {outside[0]!r} is not a file in {index.parent}; refusing to read it")
    missing = [s for s in shards if not (index.parent / s).is_file()]
    if missing:
        raise UserError(f"{index}: shard {index.parent / missing[0]} is missing")
    return [index.parent / s for s in shards]


def check_not_lfs_pointer(path: Path) -> Path:
    """``path``, unless it is the small text file Git LFS leaves where a file's content was not fetched
    (a clone with GIT_LFS_SKIP_SMUDGE=1, or without git-lfs installed)."""
    if path.stat().st_size < 1024:
        with open(path, "rb") as handle:
            if handle.read(len(LFS_POINTER)) == LFS_POINTER:
                raise UserError(
                    f"{path}: a Git LFS pointer, not the weights (the clone skipped them); "
                    f"run `git lfs pull` in {path.parent}"
                )
    return path


def normalised(name: str) -> str:
    """``decoder.*`` whether the checkpoint says ``model.decoder.*`` (125m-2.7b) or ``decoder.*`` (350m, 6.7b+)."""
    return name[len("model.") :] if name.startswith("model.") else name


def open_tensors(files: list[Path]) -> dict[str, LazyTensor]:
    """Every tensor of the files by normalised name, from their headers or pickles alone (no data is read)."""
    tensors: dict[str, LazyTensor] = {}
    for path in files:
        read = read_safetensors if path.name.endswith(".safetensors") else read_torch_zip
        tensors.update((normalised(name), tensor) for name, tensor in read(path).items())
    return tensors


def check_shapes(config: OPTConfig, found: dict[str, tuple[int, ...]], model_dir: Path, files: list[Path]) -> None:
    """A UserError naming the first tensor that config.json expects and the checkpoint lacks or shapes otherwise.

    The layer count is checked against the tensor names first, so an absurd config
    (a million layers) is refused before a name list that long is built.
    """
    layers = {name.split(".")[2] for name in found if name.startswith("decoder.layers.")}
    if config.num_hidden_layers != len(layers):
        raise UserError(
            f"{model_dir}: config.json says num_hidden_layers {config.num_hidden_layers}, "
            f"but {', '.join(p.name for p in files)} hold {len(layers)} layers"
        )
    for name, shape in expected_shapes(config).items():
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue  # tied to the token embedding; checkpoints often omit it
        if name not in found:
            raise UserError(f"{model_dir}: tensor {name} is missing from {', '.join(p.name for p in files)}")
        if found[name] != shape:
            raise UserError(
                f"{model_dir}: tensor {name} has shape {list(found[name])}, but config.json implies {list(shape)}"
            )


def load_weights(model_dir: Path, config: OPTConfig | None = None, upcast: bool = True) -> OPTWeights:
    """The weights of ``model_dir``, checked against its config.json before any tensor is read.

    The embeddings (and final LayerNorm, projections, an untied lm_head) are read now;
    each decoder layer is read when ``layers[i]`` is asked for and not kept, so the CPU
    backend holds the float32 model once and the converter about one layer at a time.
    ``upcast=False`` keeps float16 as float16 (bfloat16 is always widened to float32).
    """
    model_dir = Path(model_dir)
    files = weight_files(model_dir)
    config = config or OPTConfig.load(model_dir / "config.json")
    tensors = open_tensors(files)
    check_shapes(config, {name: t.shape for name, t in tensors.items()}, model_dir, files)
    for name in expected_shapes(config):
        if name in tensors and tensors[name].dtype not in FLOAT_DTYPES:
            raise UserError(f"{tensors[name].path}: tensor {name} has dtype {tensors[name].dtype}, expected a float type")

    def read(name: str) -> Array | None:
        return tensors[name].read(upcast) if name in tensors else None

    return assemble(config, read)


class CheckpointLayers(collections.abc.Sequence):
    """The decoder layers of a checkpoint, each read from the file when indexed."""

    def __init__(self, config: OPTConfig, read: Callable[[str], Array | None]) -> None:
        self.config, self.read = config, read

    def __len__(self) -> int:
        return self.config.num_hidden_layers

    def __getitem__(self, i: int) -> LayerWeights:  # type: ignore[override]
        if not isinstance(i, int):
            raise TypeError("layers are read one at a time")
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        return read_layer(self.config, self.read, i % len(self))


def _filled(read: Callable[[str], Array | None], name: str, fill: float, size: int) -> Array:
    """The tensor, or (for an absent bias or LayerNorm affine) ``size`` copies of ``fill``."""
    value = read(name)
    return value if value is not None else np.full(size, fill, np.float32)


def _required(read: Callable[[str], Array | None], name: str) -> Array:
    value = read(name)
    assert value is not None, f"{name} passed check_shapes"
    return value


def read_layer(config: OPTConfig, read: Callable[[str], Array | None], i: int) -> LayerWeights:
    """Decoder layer ``i``, absent biases and affines filled with zeros and ones."""
    h, f = config.hidden_size, config.ffn_dim
    p = f"decoder.layers.{i}."
    attn = p + "self_attn."

    def get(name: str, fill: float, size: int) -> Array:  # a bias or LayerNorm affine
        return _filled(read, name, fill, size)

    return LayerWeights(
        q_w=_required(read, attn + "q_proj.weight"), q_b=get(attn + "q_proj.bias", 0, h),
        k_w=_required(read, attn + "k_proj.weight"), k_b=get(attn + "k_proj.bias", 0, h),
        v_w=_required(read, attn + "v_proj.weight"), v_b=get(attn + "v_proj.bias", 0, h),
        o_w=_required(read, attn + "out_proj.weight"), o_b=get(attn + "out_proj.bias", 0, h),
        ln1_w=get(p + "self_attn_layer_norm.weight", 1, h), ln1_b=get(p + "self_attn_layer_norm.bias", 0, h),
        fc1_w=_required(read, p + "fc1.weight"), fc1_b=get(p + "fc1.bias", 0, f),
        fc2_w=_required(read, p + "fc2.weight"), fc2_b=get(p + "fc2.bias", 0, h),
        ln2_w=get(p + "final_layer_norm.weight", 1, h), ln2_b=get(p + "final_layer_norm.bias", 0, h),
    )  # fmt: skip


def assemble(config: OPTConfig, read: Callable[[str], Array | None]) -> OPTWeights:
    """OPTWeights from checked tensors: everything but the layers read now, the layers on demand."""
    h = config.hidden_size
    embed = _required(read, "decoder.embed_tokens.weight")
    final = config.has_final_layer_norm
    return OPTWeights(
        config=config,
        embed_tokens=embed,
        embed_positions=_required(read, "decoder.embed_positions.weight"),
        layers=CheckpointLayers(config, read),
        lm_head=embed if config.tie_word_embeddings else _required(read, "lm_head.weight"),
        project_in=read("decoder.project_in.weight"),
        project_out=read("decoder.project_out.weight"),
        final_ln_w=_filled(read, "decoder.final_layer_norm.weight", 1, h) if final else None,
        final_ln_b=_filled(read, "decoder.final_layer_norm.bias", 0, h) if final else None,
    )
