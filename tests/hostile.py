"""A tiny real OPT checkpoint whose greedy reply is a string of hostile terminal escapes.

A model's output is untrusted text: a checkpoint (or a prompt-injected one) can emit
escape sequences that retitle the terminal, write the clipboard through OSC 52, clear
the screen or move the cursor. Tests need a model that does so deterministically, on
every backend that reads Hugging Face checkpoints, so this builds one by hand:

- the vocabulary is the 4 OPT specials, the 256 byte-level characters (so any prompt
  encodes) and one token per element of ``SEQUENCE``; ``merges.txt`` is empty, so the
  tokenizer never produces the hostile tokens from text, it only decodes them;
- all layer weights are zero and position embeddings zero, so the residual stream at
  every position is just the token's embedding;
- the embedding of token t is a one-hot (scaled) on the hidden dim assigned to the
  token that must follow t; the untied lm_head maps that dim back to that token, with a
  margin of hundreds of logits, so even sampling at the default temperature and
  repetition penalty picks it.

Every token not in the sequence (the end of a chat prompt, "Assistant:", or of a raw
one) is followed by the sequence's first token; the last one is followed by EOS.
"""

from __future__ import annotations

import base64
import json
from functools import lru_cache
from pathlib import Path

import numpy as np
from tiny import opt_parameters, save_opt

ESC, BEL = "\x1b", "\x07"
TITLE = "pwned-title"
CLIPBOARD = "PWNED-CLIPBOARD"
VISIBLE = "visible-text"
C1_CSI = "\u009b"
SEQUENCE: tuple[str, ...] = (
    " Hi",
    f"{ESC}]0;{TITLE}{BEL}",  # OSC 0: set the window and pane title
    f"{ESC}]52;c;{base64.b64encode(CLIPBOARD.encode()).decode()}{BEL}",  # OSC 52: write the clipboard
    f"{ESC}[31m",  # SGR red
    f"{ESC}[2J",  # erase the screen
    f"{ESC}[H",  # cursor home
    C1_CSI,  # an 8-bit CSI, as UTF-8 (C2 9B)
    " " + VISIBLE,
)
REPLY = "".join(SEQUENCE)
SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")
EOS_ID = 2
HIDDEN = 16
MARGIN = 100.0  # lm_head scale: the chosen logit is about MARGIN * sqrt(HIDDEN - 1), the rest near 0


@lru_cache(maxsize=None)  # functools.cache is 3.9+
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table, which byte-level BPE vocabularies are written in."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    assert len(printable) == len(chars) == 256
    return dict(zip(printable, (chr(c) for c in chars)))


def token_string(text: str) -> str:
    """``text`` as a byte-level BPE vocabulary entry."""
    table = bytes_to_unicode()
    return "".join(table[b] for b in text.encode("utf-8"))


def vocabulary() -> dict[str, int]:
    """Specials, then every byte, then the hostile tokens in ``SEQUENCE`` order."""
    vocab = {name: i for i, name in enumerate(SPECIALS)}
    for char in bytes_to_unicode().values():
        vocab.setdefault(char, len(vocab))
    for piece in SEQUENCE:
        key = token_string(piece)
        assert key not in vocab, f"{piece!r} collides with a byte token"
        vocab[key] = len(vocab)
    return vocab


def sequence_ids() -> list[int]:
    """The token ids of the reply every prompt gets, EOS last."""
    vocab = vocabulary()
    return [vocab[token_string(piece)] for piece in SEQUENCE] + [EOS_ID]


def make_hostile_model(out_dir: Path) -> Path:
    """Save the checkpoint (config.json, model.safetensors, vocab.json, merges.txt) in ``out_dir``."""
    vocab = vocabulary()
    ids = sequence_ids()
    follows = {t: ids[i + 1] for i, t in enumerate(ids[:-1])}  # token -> the token after it
    dim_of = {t: k for k, t in enumerate(ids)}  # dim k of the residual stream means "next is ids[k]"
    assert len(ids) <= HIDDEN
    model_vocab = len(vocab) + (-len(vocab)) % 8  # padded like real OPT checkpoints
    config = dict(
        vocab_size=model_vocab, hidden_size=HIDDEN, num_hidden_layers=1, num_attention_heads=2, ffn_dim=32,
        max_position_embeddings=512, word_embed_proj_dim=HIDDEN, tie_word_embeddings=False,
        bos_token_id=EOS_ID, eos_token_id=EOS_ID, pad_token_id=1, do_layer_norm_before=True,
    )  # fmt: skip
    weights = {
        name: np.full(shape, 1.0 if "layer_norm" in name and name.endswith("weight") else 0.0, np.float32)
        for name, shape in opt_parameters(config).items()
    }
    embed = weights["model.decoder.embed_tokens.weight"]
    for token in range(model_vocab):
        embed[token, dim_of[follows.get(token, ids[0])]] = 1.0
    head = weights["lm_head.weight"]
    for token, k in dim_of.items():
        head[token, k] = MARGIN
    save_opt(out_dir, config, weights)  # numpy only: the model is made on Python 3.8 too
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (out_dir / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    return out_dir
