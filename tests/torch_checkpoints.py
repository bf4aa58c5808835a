"""Tiny OPTs in the layouts the hub ships, written with torch.save, each beside its safetensors twin.

``save_variant`` takes a tiny safetensors checkpoint (tests/tiny.py), casts it, and
writes the same tensors twice: as ``pytorch_model.bin`` (one file, or shards with a
``pytorch_model.bin.index.json`` as transformers wrote them before safetensors) and as
``model.safetensors``, so a test can compare the two readers on identical weights.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

TOKENIZER = ("vocab.json", "merges.txt")


def copy_beside(source: Path, out: Path) -> Path:
    """``out`` with ``source``'s config and tokenizer files (whichever exist)."""
    out.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", *TOKENIZER):
        if (source / name).is_file():
            shutil.copy(source / name, out / name)
    return out


def state_dict(source: Path, dtype: str, hub_names: bool) -> dict:
    """The model's tensors as transformers holds them, cast to ``dtype``; ``hub_names`` gives
    OPT-6.7B's layout: no ``model.`` prefix and no (tied) ``lm_head.weight``."""
    import torch
    import transformers

    model = transformers.OPTForCausalLM.from_pretrained(source, dtype=torch.float32)
    tensors = {name: t.to(getattr(torch, dtype)) for name, t in model.state_dict().items()}
    if hub_names:
        tensors = {name[len("model.") :]: t for name, t in tensors.items() if name != "lm_head.weight"}
    return tensors


def save_variant(source: Path, out: Path, dtype: str, shards: int = 1, hub_names: bool = False) -> tuple[Path, Path]:
    """(pytorch_model.bin directory, safetensors twin directory) of ``source`` cast to ``dtype``."""
    import torch
    from safetensors.torch import save_file

    tensors = state_dict(source, dtype, hub_names)
    bin_dir, twin_dir = copy_beside(source, out / "bin"), copy_beside(source, out / "safetensors")
    save_file({n: t.clone() for n, t in tensors.items()}, str(twin_dir / "model.safetensors"))
    if shards == 1:
        torch.save(tensors, bin_dir / "pytorch_model.bin")
        return bin_dir, twin_dir
    names = list(tensors)
    weight_map = {}
    for k in range(shards):
        shard = f"pytorch_model-{k + 1:05d}-of-{shards:05d}.bin"
        part = names[k::shards]
        torch.save({n: tensors[n] for n in part}, bin_dir / shard)  # a plain dict, as transformers' shards
        weight_map.update({n: shard for n in part})
    index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in tensors.values())},
             "weight_map": weight_map}  # fmt: skip
    (bin_dir / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    return bin_dir, twin_dir
