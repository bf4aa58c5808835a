"""A model directory from the original OPT-TPU project: its ``compile.sh`` bmodel in a Hugging Face clone.

Users of that project hold ``opt-7b.bmodel`` (or ``_int8``, ``_int4``) in a clone of
``facebook/opt-6.7b`` made with ``GIT_LFS_SKIP_SMUDGE=1``: ``config.json``, ``vocab.json``
and ``merges.txt`` are real, the weights are LFS pointers, and there is no manifest. Its nets
(``../shared/notes/seed-bmodel.md``), all float I/O float32 and ids int32:

- ``embedding``: ``input_ids`` and 0-based ``position_ids`` [N] -> hidden [N, h], with a stage
  for 1 token and one for SEQ (512);
- ``block_i``: hidden [SEQ, h] and an additive mask [1, 1, SEQ, SEQ] -> hidden, K, V [1, H, SEQ, d];
- ``block_cache_i``: hidden [1, h], mask [1, 1, 1, SEQ + 1], past K, V [1, H, SEQ, d] -> hidden and
  the cache with the new token appended, [1, H, SEQ + 1, d];
- ``splitkv``: that cache back to SEQ slots, dropping the oldest;
- ``lm_head``: final LayerNorm, lm_head and top-1: the greedy token id.

This module reads that contract: which directory holds such a model, and the sizes its nets
imply, checked against ``config.json`` where there is one. The backend is
``backends.original``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Sequence, Tuple

from opt_tpu_tui.converted import MANIFEST, bmodel_description, names_string
from opt_tpu_tui.errors import UserError
from opt_tpu_tui.model.config import OPTConfig

Shape = Tuple[int, ...]
IO = Tuple[List[Tuple[Shape, str]], List[Tuple[Shape, str]]]  # (shape, dtype name) of inputs and of outputs
EMBEDDING, SPLITKV, LM_HEAD = "embedding", "splitkv", "lm_head"
MASKED = -1000.0  # the original's mask value: what its demo and its graphs were made with
CONFIG = "config.json"


def prefill_net(layer: int) -> str:
    return f"block_{layer}"


def decode_net(layer: int) -> str:
    return f"block_cache_{layer}"


def bmodels(model_dir: Path) -> list[Path]:
    return sorted(p for p in Path(model_dir).glob("*.bmodel") if p.is_file())


def is_original(model_dir: Path) -> bool:
    """A folder with no ``manifest.json`` and a ``*.bmodel`` naming the original's ``embedding`` or ``splitkv`` net.

    Either one is enough, so a bmodel lacking the other is still taken for one and its
    missing net named (every net is checked on load); this project's own nets have neither
    name, so a converted folder that lost its manifest is told so instead.
    """
    if (Path(model_dir) / MANIFEST).exists():
        return False
    return any(
        names_string(data, EMBEDDING) or names_string(data, SPLITKV)
        for data in map(bmodel_description, bmodels(model_dir))
    )


def find_bmodel(model_dir: Path) -> Path:
    """The one bmodel of an original-layout directory; several are a UserError naming them."""
    found = bmodels(model_dir)
    if len(found) != 1:
        names = ", ".join(p.name for p in found)
        raise UserError(f"{model_dir}: holds {len(found)} bmodels ({names}); keep the one to chat with there")
    return found[0]


def strip_ones(shape: Sequence[int]) -> Shape:
    """A shape without its leading 1s: [1, 512, 4096] and [512, 4096] are the same hidden state."""
    shape = tuple(shape)
    while shape and shape[0] == 1:
        shape = shape[1:]
    return shape


@dataclass(frozen=True)
class Sizes:
    """What the nets' shapes say about the model."""

    layers: int
    hidden: int
    heads: int
    head_dim: int
    seq: int  # the static length of prefill and of the cache (512 in the original)

    @classmethod
    def from_nets(cls, names: set[str], io: Callable[[str], IO], bmodel: Path) -> Sizes:
        layers = 0
        while prefill_net(layers) in names:
            layers += 1
        if layers == 0:
            raise UserError(f"{bmodel}: has no net block_0, which the OPT-TPU layout needs")
        ins, outs = io(prefill_net(0))
        if len(ins) != 2 or len(outs) != 3 or len(outs[1][0]) != 4:
            raise UserError(f"{bmodel}: net block_0 takes {len(ins)} inputs and gives {len(outs)} outputs, "
                            "not OPT-TPU's hidden + mask -> hidden, K, V")  # fmt: skip
        _, heads, seq, head_dim = outs[1][0]
        hidden = ins[0][0][-1]
        return cls(layers, hidden, heads, head_dim, seq)

    def check_config(self, config: OPTConfig, path: Path, bmodel: Path) -> None:
        """A UserError naming the first size on which ``config.json`` and the bmodel disagree."""
        for name, mine, theirs in [
            ("num_hidden_layers", self.layers, config.num_hidden_layers),
            ("hidden_size", self.hidden, config.hidden_size),
            ("num_attention_heads", self.heads, config.num_attention_heads),
            ("head_dim (hidden_size / num_attention_heads)", self.head_dim, config.head_dim),
        ]:
            if mine != theirs:
                raise UserError(
                    f"{bmodel}: its nets have {name} {mine}, but {path} says {theirs}: they belong to different models"
                )
        if config.has_projections or not config.do_layer_norm_before:
            raise UserError(f"{path}: a post-LN or projected OPT (as opt-350m); OPT-TPU's bmodels are of pre-LN models")
        if self.seq > config.max_position_embeddings:
            raise UserError(f"{bmodel}: its nets run {self.seq} tokens, past {path}'s {config.max_position_embeddings}")

    def expected(self) -> dict[str, tuple[list[Shape], list[Shape]]]:
        """Every net but the embedding: input and output shapes, leading 1s stripped."""
        s, h, kv = self.seq, self.hidden, (self.heads, self.seq, self.head_dim)
        kv1 = (self.heads, s + 1, self.head_dim)
        nets = {SPLITKV: ([kv1, kv1], [kv, kv]), LM_HEAD: ([(h,)], [()])}
        for i in range(self.layers):
            nets[prefill_net(i)] = ([(s, h), (s, s)], [(s, h), kv, kv])
            nets[decode_net(i)] = ([(h,), (s + 1,), kv, kv], [(h,), kv1, kv1])
        return {net: ([strip_ones(x) for x in ins], [strip_ones(x) for x in outs]) for net, (ins, outs) in nets.items()}


def read_config(model_dir: Path) -> OPTConfig | None:
    path = Path(model_dir) / CONFIG
    return OPTConfig.load(path) if path.is_file() else None


def vocab_entries(model_dir: Path) -> int:
    """Tokens in vocab.json: the vocabulary size when there is no config.json to say it."""
    path = Path(model_dir) / "vocab.json"
    try:
        return len(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError) as error:
        raise UserError(f"{path}: cannot read it ({error})") from None
