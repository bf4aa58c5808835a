"""Tiny OPT model directories made on the spot: random weights, a freshly trained byte-level BPE.

Tests build their own checkpoints (never downloaded), in the same layout as a Hugging
Face OPT directory: config.json, model.safetensors, vocab.json, merges.txt. With
transformers installed (Python 3.10+) they are its OPTForCausalLM; without it (the box's
Python 3.8, where torch 2.13 and transformers 5 do not install) ``save_opt`` writes the
same tensors from numpy, so the tests that need no reference implementation run there too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

NO_REFERENCE = "torch and transformers, the reference implementation, are not installed (they need Python 3.10+)"

SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]
CORPUS = [
    "Hello world, this is a small test of the tokenizer and the model.",
    "User: What is the capital of France?\nAssistant: The capital of France is Paris.",
    "日本語のテキストです。中文文本。Ελληνικά. Русский текст.",
    "emoji 😀🎉👍🏽 and more: café, naïve, façade, 🚀",
    "The quick brown fox jumps over the lazy dog. 0123456789 !@#$%^&*()",
]

TINY: dict[str, Any] = dict(  # make_model's config, before its overrides
    vocab_size=408,
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    ffn_dim=128,
    max_position_embeddings=128,
    init_std=0.2,  # wider than the default 0.02, so greedy choices are not near-ties
)
# numpy draws for make_model(seed=s) come from default_rng(s + 20). tests/test_tpu_backend.py needs the
# greedy decode of its prompt free of near-ties, which float16 on the TPU flips (with 0 itself the
# pre-LN model's top two logits come 0.02 % of their scale apart; with 20 no closer than 1.5 % in the
# pre- and post-LN models), and the pre-LN one to bring a new token after its third.
NUMPY_SEED_OFFSET = 20


def torch_and_transformers() -> tuple[Any, Any]:
    """torch and transformers, or a skip of the calling test where they are not installed (Python 3.8, 3.9)."""
    return pytest.importorskip("torch", reason=NO_REFERENCE), pytest.importorskip("transformers", reason=NO_REFERENCE)


def train_tokenizer(out_dir: Path, vocab_size: int = 400) -> Path:
    """Train a byte-level BPE on a small corpus and save vocab.json + merges.txt in ``out_dir``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS * 20, trainer)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.model.save(str(out_dir))
    return out_dir


# A model big enough that a long reply takes seconds on the CPU (room to stop it, drop a client or fill a
# queue meanwhile), small enough to load in a few.
SLOW_CONFIG = dict(hidden_size=384, num_hidden_layers=6, ffn_dim=1536, num_attention_heads=6, max_position_embeddings=1024)


def make_model(out_dir: Path, seed: int = 0, tokenizer: bool = True, **config: object) -> Path:
    """Save a random OPTForCausalLM in ``out_dir`` (safetensors) and, optionally, a tokenizer.

    ``config`` overrides the tiny defaults below; the model vocab is padded past the
    tokenizer's, as real OPT checkpoints are (50272 rows for 50265 tokens).
    """
    values: dict[str, Any] = {**TINY, **config}
    values.setdefault("word_embed_proj_dim", values["hidden_size"])
    try:
        import torch
        import transformers
    except ImportError:
        save_opt(out_dir, values, random_weights(values, seed + NUMPY_SEED_OFFSET))
    else:
        torch.manual_seed(seed)
        model = transformers.OPTForCausalLM(transformers.OPTConfig(**values)).eval()
        model.save_pretrained(out_dir, safe_serialization=True)
    if tokenizer:
        train_tokenizer(out_dir)
    return out_dir


def opt_parameters(config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor transformers' OPTForCausalLM saves for ``config`` (OPTConfig's defaults)."""
    hidden, proj = config["hidden_size"], config.get("word_embed_proj_dim", config["hidden_size"])
    vocab, ffn = config["vocab_size"], config["ffn_dim"]
    bias = config.get("enable_bias", True)
    affine = config.get("layer_norm_elementwise_affine", True)

    def linear(name: str, out: int, inp: int, with_bias: bool = bias) -> dict[str, tuple[int, ...]]:
        return {f"{name}.weight": (out, inp), **({f"{name}.bias": (out,)} if with_bias else {})}

    def norm(name: str) -> dict[str, tuple[int, ...]]:
        return {f"{name}.weight": (hidden,), f"{name}.bias": (hidden,)} if affine else {}

    shapes = {
        "model.decoder.embed_tokens.weight": (vocab, proj),
        "model.decoder.embed_positions.weight": (config["max_position_embeddings"] + 2, hidden),
    }
    if proj != hidden:
        shapes.update(linear("model.decoder.project_out", proj, hidden, False))
        shapes.update(linear("model.decoder.project_in", hidden, proj, False))
    if config.get("do_layer_norm_before", True) and not config.get("_remove_final_layer_norm", False):
        shapes.update(norm("model.decoder.final_layer_norm"))
    for i in range(config["num_hidden_layers"]):
        layer = f"model.decoder.layers.{i}"
        for part in ("k_proj", "v_proj", "q_proj", "out_proj"):
            shapes.update(linear(f"{layer}.self_attn.{part}", hidden, hidden))
        shapes.update(norm(f"{layer}.self_attn_layer_norm"))
        shapes.update(linear(f"{layer}.fc1", ffn, hidden))
        shapes.update(linear(f"{layer}.fc2", hidden, ffn))
        shapes.update(norm(f"{layer}.final_layer_norm"))
    if not config.get("tie_word_embeddings", True):
        shapes["lm_head.weight"] = (vocab, proj)
    return shapes


def random_weights(config: dict[str, Any], seed: int) -> dict[str, np.ndarray]:
    """OPT's initialisation: weights normal(0, init_std), biases 0, LayerNorms 1 and 0, the pad row 0."""
    rng = np.random.default_rng(seed)
    std = config.get("init_std", 0.02)
    weights = {}
    for name, shape in opt_parameters(config).items():
        if "layer_norm" in name:
            weights[name] = np.full(shape, 1.0 if name.endswith("weight") else 0.0, np.float32)
        elif name.endswith("bias"):
            weights[name] = np.zeros(shape, np.float32)
        else:
            weights[name] = rng.normal(0.0, std, shape).astype(np.float32)
    weights["model.decoder.embed_tokens.weight"][config.get("pad_token_id", 1)] = 0.0
    return weights


def save_opt(out_dir: Path, config: dict[str, Any], weights: dict[str, np.ndarray]) -> None:
    """Write config.json and model.safetensors as ``save_pretrained`` does, from numpy alone."""
    from safetensors.numpy import save_file

    assert set(weights) == set(opt_parameters(config)), "not the tensors OPTForCausalLM has"
    out_dir.mkdir(parents=True, exist_ok=True)
    full = {"model_type": "opt", "architectures": ["OPTForCausalLM"], "torch_dtype": "float32", **config}
    (out_dir / "config.json").write_text(json.dumps(full, indent=2))
    save_file(weights, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
