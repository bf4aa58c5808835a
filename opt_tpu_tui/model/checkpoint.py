"""Load an OPT checkpoint saved by Hugging Face (safetensors, single file or sharded).

Every OPT size names its tensors a little differently (``model.decoder.*`` for
125m/1.3b/2.7b, ``decoder.*`` for 350m and 6.7b+, with or without ``lm_head``),
so names are normalised to ``decoder.*`` and the tied lm_head is filled in from
the token embedding. Absent biases and LayerNorm affines become zeros and ones,
so the math downstream has a single form.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from opt_tpu_tui.errors import UserError, is_plain_name, read_json_object
from opt_tpu_tui.model.config import POSITION_OFFSET, OPTConfig

Array = np.ndarray

CONVERT_HINT = (
    "convert it to safetensors with: python -c \"from transformers import OPTForCausalLM as M; "
    "M.from_pretrained('{d}').save_pretrained('{d}', safe_serialization=True)\""
)


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
    layers: list[LayerWeights]
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


def weight_files(model_dir: Path) -> list[Path]:
    """The safetensors files of a model directory, or a UserError saying what is there instead."""
    if not model_dir.is_dir():
        raise UserError(f"{model_dir}: no such model directory")
    single = model_dir / "model.safetensors"
    index = model_dir / "model.safetensors.index.json"
    if single.is_file():
        return [single]
    if index.is_file():
        weight_map = read_json_object(index, "").get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(s, str) for s in weight_map.values()):
            raise UserError(f"{index}: not a valid safetensors index (no weight_map of tensor -> file)")
        shards = sorted(set(weight_map.values()))
        outside = [s for s in shards if not is_plain_name(s)]
        if outside:
            raise UserError(f"{index}: shard {outside[0]!r} is not a file in {model_dir}; refusing to read it")
        missing = [s for s in shards if not (model_dir / s).is_file()]
        if missing:
            raise UserError(f"{index}: shard {model_dir / missing[0]} is missing")
        return [model_dir / s for s in shards]
    if (model_dir / "pytorch_model.bin").is_file() or (model_dir / "pytorch_model.bin.index.json").is_file():
        raise UserError(
            f"{model_dir}: only pytorch_model.bin found, which is not read for safety and speed; "
            + CONVERT_HINT.format(d=model_dir)
        )
    raise UserError(f"{model_dir}: no model.safetensors (or sharded model.safetensors.index.json) found")


def normalised_name(name: str) -> str:
    """A tensor's name without the ``model.`` that some checkpoints put first (no str.removeprefix: 3.8)."""
    return name[len("model."):] if name.startswith("model.") else name


def tensor_shapes(files: list[Path]) -> dict[str, tuple[int, ...]]:
    """Every tensor's normalised name and shape, from the safetensors headers alone (no data is read)."""
    from safetensors import SafetensorError, safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    for path in files:
        try:
            with safe_open(str(path), framework="numpy") as handle:
                for name in handle.keys():
                    shapes[normalised_name(name)] = tuple(handle.get_slice(name).get_shape())
        except (SafetensorError, OSError, ValueError, TypeError) as error:
            raise UserError(f"{path}: not a readable safetensors file ({error})") from None
    return shapes


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


def read_tensors(path: Path, upcast: bool = True) -> dict[str, Array]:
    """All tensors of one safetensors file, names normalised, upcast to float32 unless ``upcast`` is False."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        raw = load_file(str(path))
    except TypeError as error:
        if "bfloat16" in str(error):
            raise UserError(
                f"{path}: bfloat16 tensors cannot be read by numpy; save the checkpoint as float16 or float32 "
                "(model.to(torch.float16).save_pretrained(...))"
            ) from None
        raise UserError(f"{path}: not a readable safetensors file ({error})") from None
    except (SafetensorError, OSError, ValueError) as error:
        raise UserError(f"{path}: not a readable safetensors file ({error})") from None
    tensors = {}
    for name, value in raw.items():
        name = normalised_name(name)
        if not np.issubdtype(value.dtype, np.floating):
            raise UserError(f"{path}: tensor {name} has dtype {value.dtype}, expected a float type")
        tensors[name] = value.astype(np.float32, copy=False) if upcast else value
    return tensors


def load_weights(model_dir: Path, config: OPTConfig | None = None, upcast: bool = True) -> OPTWeights:
    """Read config.json and the safetensors weights of ``model_dir``, checked against each other.

    ``upcast=False`` keeps the checkpoint's float dtype: the converter casts one layer at a
    time, so OPT-6.7B's float16 checkpoint needs 13 GB of RAM instead of 27.
    """
    model_dir = Path(model_dir)
    files = weight_files(model_dir)
    config = config or OPTConfig.load(model_dir / "config.json")
    check_shapes(config, tensor_shapes(files), model_dir, files)  # before any tensor is read
    tensors: dict[str, Array] = {}
    for path in files:
        tensors.update(read_tensors(path, upcast))
    return assemble(config, tensors)


def assemble(config: OPTConfig, t: dict[str, Array]) -> OPTWeights:
    """Group checked tensors into OPTWeights, filling absent biases/affines with zeros/ones."""
    h, f = config.hidden_size, config.ffn_dim

    def get(name: str, fill: float, size: int) -> Array:
        return t[name] if name in t else np.full(size, fill, np.float32)

    layers = []
    for i in range(config.num_hidden_layers):
        p = f"decoder.layers.{i}."
        attn = p + "self_attn."
        layers.append(
            LayerWeights(
                q_w=t[attn + "q_proj.weight"], q_b=get(attn + "q_proj.bias", 0, h),
                k_w=t[attn + "k_proj.weight"], k_b=get(attn + "k_proj.bias", 0, h),
                v_w=t[attn + "v_proj.weight"], v_b=get(attn + "v_proj.bias", 0, h),
                o_w=t[attn + "out_proj.weight"], o_b=get(attn + "out_proj.bias", 0, h),
                ln1_w=get(p + "self_attn_layer_norm.weight", 1, h), ln1_b=get(p + "self_attn_layer_norm.bias", 0, h),
                fc1_w=t[p + "fc1.weight"], fc1_b=get(p + "fc1.bias", 0, f),
                fc2_w=t[p + "fc2.weight"], fc2_b=get(p + "fc2.bias", 0, h),
                ln2_w=get(p + "final_layer_norm.weight", 1, h), ln2_b=get(p + "final_layer_norm.bias", 0, h),
            )
        )  # fmt: skip
    embed = t["decoder.embed_tokens.weight"]
    final = config.has_final_layer_norm
    return OPTWeights(
        config=config,
        embed_tokens=embed,
        embed_positions=t["decoder.embed_positions.weight"],
        layers=layers,
        lm_head=embed if config.tie_word_embeddings else t["lm_head.weight"],
        project_in=t.get("decoder.project_in.weight"),
        project_out=t.get("decoder.project_out.weight"),
        final_ln_w=get("decoder.final_layer_norm.weight", 1, h) if final else None,
        final_ln_b=get("decoder.final_layer_norm.bias", 0, h) if final else None,
    )
