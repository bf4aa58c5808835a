"""OPT hyper-parameters, read from a Hugging Face ``config.json``."""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Any

from opt_tpu_tui.errors import UserError, read_json_object

LAYER_NORM_EPS = 1e-5  # OPT hard-codes it; config.json has no field for it
POSITION_OFFSET = 2  # learned position table rows 0 and 1 are never used


@dataclass(frozen=True)
class OPTConfig:
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    ffn_dim: int
    max_position_embeddings: int
    word_embed_proj_dim: int
    do_layer_norm_before: bool = True
    remove_final_layer_norm: bool = False
    enable_bias: bool = True
    layer_norm_elementwise_affine: bool = True
    tie_word_embeddings: bool = True
    activation_function: str = "relu"
    bos_token_id: int = 2
    eos_token_id: int = 2
    pad_token_id: int = 1

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def has_final_layer_norm(self) -> bool:
        """The decoder-level LayerNorm exists only for pre-LN models (not opt-350m)."""
        return self.do_layer_norm_before and not self.remove_final_layer_norm

    @property
    def has_projections(self) -> bool:
        """opt-350m embeds in 512 dims and projects in and out of its 1024-dim decoder."""
        return self.word_embed_proj_dim != self.hidden_size

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config.json") -> OPTConfig:
        if raw.get("model_type", "opt") != "opt":
            raise UserError(f"{source}: model_type is {raw.get('model_type')!r}, not 'opt'")
        values = dict(raw)
        values.setdefault("word_embed_proj_dim", values.get("hidden_size"))
        values["remove_final_layer_norm"] = bool(values.pop("_remove_final_layer_norm", False))
        names = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in values.items() if k in names and v is not None}
        missing = [f.name for f in fields(cls) if f.default is MISSING and f.name not in kwargs]
        if missing:
            raise UserError(f"{source}: missing {', '.join(missing)}")
        for f in fields(cls):
            expected = {"int": int, "bool": bool, "str": str}[str(f.type)]
            value = kwargs.get(f.name, f.default)
            if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
                raise UserError(f"{source}: {f.name} should be {f.type}, got {value!r}")
            if expected is int and value <= 0 and not f.name.endswith("token_id"):
                raise UserError(f"{source}: {f.name} should be positive, got {value}")
        config = cls(**kwargs)
        if config.hidden_size % config.num_attention_heads:
            raise UserError(
                f"{source}: hidden_size {config.hidden_size} is not a multiple of "
                f"num_attention_heads {config.num_attention_heads}"
            )
        if config.activation_function != "relu":
            raise UserError(f"{source}: activation_function {config.activation_function!r} is not supported (OPT uses relu)")
        return config

    @classmethod
    def load(cls, path: Path) -> OPTConfig:
        raw = read_json_object(path, "an OPT model directory needs config.json")
        try:
            return cls.from_dict(raw, source=str(path))
        except TypeError as error:
            raise UserError(f"{path}: {error}") from None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
