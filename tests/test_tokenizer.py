"""The OPT tokenizer against transformers' GPT2Tokenizer on the same vocab.json + merges.txt."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from tiny import torch_and_transformers, train_tokenizer

from opt_tpu_tui.errors import UserError
from opt_tpu_tui.tokenizer import Tokenizer

rng = random.Random(1234)
TEXTS = {
    "ascii": "Hello world! The quick brown fox, 42 times.\n\tIndented  double  spaces.",
    "cjk": "日本語のテキストです。中文文本，还有한국어 텍스트.",
    "emoji": "emoji 😀🎉 and skin tones 👍🏽 and flags 🇫🇷 and ZWJ 👩‍💻",
    "random-bytes": bytes(rng.randrange(256) for _ in range(400)).decode("utf-8", errors="replace"),
    "random-codepoints": "".join(chr(rng.randrange(0x20, 0x2FFF)) for _ in range(300)),
}


@pytest.fixture(scope="module")
def vocab_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tokenizer(tmp_path_factory.mktemp("bpe"))


@pytest.fixture(scope="module")
def pair(vocab_dir: Path) -> tuple[Tokenizer, Any]:
    """Ours and transformers' GPT2Tokenizer on the same files."""
    _, transformers = torch_and_transformers()
    gpt2 = transformers.GPT2Tokenizer(
        str(vocab_dir / "vocab.json"), str(vocab_dir / "merges.txt"),
        bos_token="</s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>", add_prefix_space=False,
    )  # fmt: skip
    return Tokenizer.from_dir(vocab_dir), gpt2


@pytest.mark.parametrize("name", TEXTS)
def test_ids_equal_gpt2_tokenizer_with_bos(pair, name: str) -> None:
    ours, reference = pair
    text = TEXTS[name]
    expected = reference(text, add_special_tokens=False)["input_ids"]
    assert ours.encode(text) == [2, *expected]
    assert ours.encode(text, add_bos=False) == expected
    assert ours.decode(ours.encode(text)) == reference.decode(expected)


@pytest.mark.parametrize("name", TEXTS)
def test_streamed_pieces_concatenate_to_the_full_decode(pair, name: str) -> None:
    ours, _ = pair
    ids = ours.encode(TEXTS[name], add_bos=False)
    stream = ours.stream()
    pieces = [stream.push(i) for i in ids] + [stream.flush()]
    assert "".join(pieces) == ours.decode(ids) == TEXTS[name]
    assert not any("\ufffd" in p for p in pieces if "\ufffd" not in TEXTS[name])


def test_stream_holds_back_a_split_character_and_never_drops_one(pair) -> None:
    ours, _ = pair
    rand = random.Random(7)
    for _ in range(200):
        ids = [rand.randrange(ours.vocab_size) for _ in range(rand.randrange(1, 40))]
        stream = ours.stream()
        pieces = [stream.push(i) for i in ids]
        assert "".join(pieces) + stream.flush() == ours.decode(ids)
        # only the held-back tail may be incomplete: every emitted piece is whole characters
        assert all(not p.endswith("\ufffd") for p in pieces)


def test_special_ids_follow_opt(pair) -> None:
    ours, _ = pair
    assert (ours.bos_id, ours.eos_id) == (2, 2)


def test_missing_and_corrupt_files(tmp_path: Path, vocab_dir: Path) -> None:
    with pytest.raises(UserError, match=r"vocab\.json: not found"):
        Tokenizer.from_dir(tmp_path)
    (tmp_path / "vocab.json").write_text("{not json")
    (tmp_path / "merges.txt").write_text((vocab_dir / "merges.txt").read_text())
    with pytest.raises(UserError, match=r"vocab\.json: not valid JSON"):
        Tokenizer.from_dir(tmp_path)
    (tmp_path / "vocab.json").write_text('{"a": 0}')
    with pytest.raises(UserError, match="not an OPT vocabulary"):
        Tokenizer.from_dir(tmp_path)
