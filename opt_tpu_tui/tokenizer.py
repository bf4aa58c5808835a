"""OPT's byte-level BPE tokenizer, read from ``vocab.json`` + ``merges.txt``.

OPT uses GPT-2's byte-level BPE with fairseq's id order and prepends ``</s>`` (id 2)
as the beginning-of-sequence token. Text is streamed out with a decoder that holds
back bytes until they form whole UTF-8 characters.
"""

from __future__ import annotations

from pathlib import Path

from opt_tpu_tui.errors import UserError, check_regular_file, read_json_object

SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>")
BOS = EOS = "</s>"
REPLACEMENT = "\ufffd"


class Tokenizer:
    def __init__(self, vocab_path: Path, merges_path: Path) -> None:
        from tokenizers import Tokenizer as _Tokenizer
        from tokenizers import decoders, models, pre_tokenizers

        for path in (vocab_path, merges_path):
            check_regular_file(path, "a model directory needs vocab.json and merges.txt")
        vocab = read_json_object(vocab_path, "a model directory needs vocab.json and merges.txt")
        if not all(isinstance(v, int) and 0 <= v for v in vocab.values()):
            raise UserError(f"{vocab_path}: expected a JSON object of token -> id (a whole number from 0)")
        missing = [t for t in (BOS, EOS) if t not in vocab]
        if missing:
            raise UserError(f"{vocab_path}: no {missing[0]} token, so this is not an OPT vocabulary")
        merges = read_merges(merges_path)
        try:
            model = models.BPE(vocab, merges)
        except Exception as error:  # tokenizers raises plain Exception for a malformed merges file
            raise UserError(f"{merges_path}: not a valid BPE merges file ({error})") from None
        self._tok = _Tokenizer(model)
        self._tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        self._tok.decoder = decoders.ByteLevel()
        self._tok.add_special_tokens([t for t in SPECIAL_TOKENS if t in vocab])
        self.bos_id: int = vocab[BOS]
        self.eos_id: int = vocab[EOS]
        self.vocab_size: int = self._tok.get_vocab_size(with_added_tokens=True)
        self.vocab_path = vocab_path
        self.max_id: int = max(vocab.values())  # a model must have a logit row for every id

    @classmethod
    def from_dir(cls, model_dir: Path) -> Tokenizer:
        model_dir = Path(model_dir)
        return cls(model_dir / "vocab.json", model_dir / "merges.txt")

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        ids = self._tok.encode(text, add_special_tokens=False).ids
        return [self.bos_id, *ids] if add_bos else ids

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=True)

    def stream(self) -> StreamDecoder:
        return StreamDecoder(self)


def read_merges(path: Path) -> list[tuple[str, str]]:
    """The merges of ``merges.txt``, read as ``tokenizers`` reads them (``#version`` lines skipped, one
    space-separated pair a line), but with a UTF-8 byte order mark skipped, as transformers does, and a file
    with nothing in it refused: that is an interrupted download, and would leave the tokenizer spelling
    every word out byte by byte."""
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as error:
        raise UserError(f"{path}: cannot be read ({error.strerror or error})") from None
    except UnicodeDecodeError as error:
        raise UserError(f"{path}: not valid UTF-8 ({error.reason} at byte {error.start})") from None
    text = text[1:] if text.startswith("\ufeff") else text
    if not text.strip():
        raise UserError(f"{path}: empty, so not a BPE merges file (an interrupted download? fetch it again)")
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
            raise UserError(f"{path}: not a valid BPE merges file (line {number} is not two tokens and a space)")
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
