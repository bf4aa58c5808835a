"""OPT's byte-level BPE tokenizer, read from ``vocab.json`` + ``merges.txt``.

OPT uses GPT-2's byte-level BPE with fairseq's id order and prepends ``</s>`` (id 2)
as the beginning-of-sequence token. Text is streamed out with a decoder that holds
back bytes until they form whole UTF-8 characters.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from opt_tpu_tui.errors import UserError, check_regular_file, parse_json, read_json_object

SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>")
BOS = EOS = "</s>"
REPLACEMENT = "\ufffd"


class Tokenizer:
    """Encodes and decodes with a vocabulary (token -> id) and its BPE merges; ``source`` and ``merges_source``
    name where they came from, in errors."""

    def __init__(
        self, vocab: dict[str, Any], merges: list[tuple[str, str]], source: str = "vocab.json", merges_source: str = "",
    ) -> None:  # fmt: skip
        from tokenizers import Tokenizer as _Tokenizer
        from tokenizers import decoders, models, pre_tokenizers

        if not all(isinstance(v, int) and 0 <= v for v in vocab.values()):
            raise UserError(f"{source}: expected a JSON object of token -> id (a whole number from 0)")
        missing = [t for t in (BOS, EOS) if t not in vocab]
        if missing:
            raise UserError(f"{source}: no {missing[0]} token, so this is not an OPT vocabulary")
        try:
            model = models.BPE(vocab, merges)
        except Exception as error:  # tokenizers raises plain Exception for a malformed merges file
            raise UserError(f"{merges_source or source}: not a valid BPE merges file ({error})") from None
        self._tok = _Tokenizer(model)
        self._tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        self._tok.decoder = decoders.ByteLevel()
        self._tok.add_special_tokens([t for t in SPECIAL_TOKENS if t in vocab])
        self.bos_id: int = vocab[BOS]
        self.eos_id: int = vocab[EOS]
        self.vocab_size: int = self._tok.get_vocab_size(with_added_tokens=True)
        self.source = source
        self.max_id: int = max(vocab.values())  # a model must have a logit row for every id

    @classmethod
    def from_dir(cls, model_dir: Path) -> Tokenizer:
        """The tokenizer of a model directory's ``vocab.json`` and ``merges.txt``."""
        vocab_path, merges_path = Path(model_dir) / "vocab.json", Path(model_dir) / "merges.txt"
        for path in (vocab_path, merges_path):
            check_regular_file(path, "a model directory needs vocab.json and merges.txt")
        vocab = read_json_object(vocab_path, "a model directory needs vocab.json and merges.txt")
        return cls(vocab, read_merges(merges_path), str(vocab_path), str(merges_path))

    @classmethod
    def from_texts(cls, vocab: str, merges: str, source: str) -> Tokenizer:
        """The tokenizer of the two files' texts (a server's: serve/client.py); errors name ``source``."""
        words = parse_json(vocab)
        if not isinstance(words, dict):
            raise UserError(f"{source}: the vocabulary is not a JSON object")
        return cls(words, parse_merges(merges, source), source)

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        ids = self._tok.encode(text, add_special_tokens=False).ids
        return [self.bos_id, *ids] if add_bos else ids

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=True)

    def stream(self) -> StreamDecoder:
        return StreamDecoder(self)


def read_merges(path: Path) -> list[tuple[str, str]]:
    """The merges of ``merges.txt`` (parse_merges), a UserError naming the file where it cannot be read."""
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as error:
        raise UserError(f"{path}: cannot be read ({error.strerror or error})") from None
    except UnicodeDecodeError as error:
        raise UserError(f"{path}: not valid UTF-8 ({error.reason} at byte {error.start})") from None
    return parse_merges(text, str(path))


def parse_merges(text: str, source: str) -> list[tuple[str, str]]:
    """The merges of a ``merges.txt``, read as ``tokenizers`` reads them (``#version`` lines skipped, one
    space-separated pair a line), but with a UTF-8 byte order mark skipped, as transformers does, and a file
    with nothing in it refused: that is an interrupted download, and would leave the tokenizer spelling
    every word out byte by byte."""
    text = text[1:] if text.startswith("\ufeff") else text
    if not text.strip():
        raise UserError(f"{source}: empty, so not a BPE merges file (an interrupted download? fetch it again)")
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # the newline that ends the last line
    merges = []
    for number, line in enumerate(lines, 1):
        line = line[:-1] if line.endswith("\r") else line
        if line.startswith("#version"):
            continue
        pair = line.split(" ")
        if len(pair) != 2:
            raise UserError(f"{source}: not a valid BPE merges file (line {number} is not two tokens and a space)")
        merges.append((pair[0], pair[1]))
    return merges


class StreamDecoder:
    """Turns token ids into text pieces, never splitting a UTF-8 character.

    Byte-level BPE tokens can end inside a multi-byte character, so a piece is
    emitted only once the decoded tail no longer ends in a replacement character
    (the read-offset method of TGI and vLLM). ``flush`` emits whatever is held back,
    so the pieces always concatenate to ``decode`` of all ids.
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        self._start = 0  # first id not yet emitted as text

    def push(self, token: int) -> str:
        self._ids.append(token)
        text = self._tokenizer.decode(self._ids[self._start :])
        if not text or text.endswith(REPLACEMENT):
            return ""
        self._start = len(self._ids)
        return text

    def flush(self) -> str:
        text = self._tokenizer.decode(self._ids[self._start :])
        self._start = len(self._ids)
        return text
