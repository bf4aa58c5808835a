"""Tiny OPT model directories made on the spot: random weights, a freshly trained byte-level BPE.

Tests build their own checkpoints with transformers (never downloaded), in the same
layout as a Hugging Face OPT directory: config.json, model.safetensors, vocab.json,
merges.txt.
"""

from __future__ import annotations

from pathlib import Path

SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]
CORPUS = [
    "Hello world, this is a small test of the tokenizer and the model.",
    "User: What is the capital of France?\nAssistant: The capital of France is Paris.",
    "日本語のテキストです。中文文本。Ελληνικά. Русский текст.",
    "emoji 😀🎉👍🏽 and more: café, naïve, façade, 🚀",
    "The quick brown fox jumps over the lazy dog. 0123456789 !@#$%^&*()",
]


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


def make_model(out_dir: Path, seed: int = 0, tokenizer: bool = True, **config: object) -> Path:
    """Save a random OPTForCausalLM in ``out_dir`` (safetensors) and, optionally, a tokenizer.

    ``config`` overrides the tiny defaults below; the model vocab is padded past the
    tokenizer's, as real OPT checkpoints are (50272 rows for 50265 tokens).
    """
    import torch
    import transformers

    values: dict[str, object] = dict(
        vocab_size=408,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        ffn_dim=128,
        max_position_embeddings=128,
        init_std=0.2,  # wider than the default 0.02, so greedy choices are not near-ties
    )
    values.update(config)
    values.setdefault("word_embed_proj_dim", values["hidden_size"])
    torch.manual_seed(seed)
    model = transformers.OPTForCausalLM(transformers.OPTConfig(**values)).eval()
    model.save_pretrained(out_dir, safe_serialization=True)
    if tokenizer:
        train_tokenizer(out_dir)
    return out_dir
