"""Checkpoint and tokenizer files that are malformed in ways the readers once let through.

Each safetensors case is also given to the ``safetensors`` library, where it has a rule
for it, so that what is refused here is what the format's own reader refuses.
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open
from tiny import torch_and_transformers, train_tokenizer

from opt_tpu_tui.errors import UserError
from opt_tpu_tui.model.checkpoint import weight_files
from opt_tpu_tui.model.safetensors_file import read_safetensors
from opt_tpu_tui.tokenizer import Tokenizer

DATA = np.arange(8, dtype=np.float32).tobytes()  # 32 bytes


def write_safetensors(path: Path, header: str, data: bytes = DATA) -> Path:
    """A safetensors file with ``header`` as its JSON text, byte for byte (duplicate keys survive)."""
    raw = header.encode("utf-8")
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def entry(shape: list[int], begin: int, end: int) -> str:
    return json.dumps({"dtype": "F32", "shape": shape, "data_offsets": [begin, end]})


def refused_by_safetensors(path: Path) -> bool:
    try:
        with safe_open(str(path), framework="numpy") as handle:
            list(handle.keys())
    except Exception:  # noqa: BLE001 - SafetensorError is not importable under one name across versions
        return True
    return False


def one_line_refusal(path: Path) -> str:
    with pytest.raises(UserError) as caught:
        read_safetensors(path)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{path}: not a readable safetensors file")
    return message


def test_a_well_formed_file_is_read_by_both(tmp_path: Path) -> None:
    path = write_safetensors(tmp_path / "ok.safetensors", f'{{"a": {entry([4], 0, 16)}, "b": {entry([4], 16, 32)}}}')
    assert not refused_by_safetensors(path)
    tensors = read_safetensors(path)
    assert tensors["b"].read().tolist() == [4, 5, 6, 7]


def test_tensors_sharing_the_same_bytes_are_refused(tmp_path: Path) -> None:
    path = write_safetensors(tmp_path / "overlap.safetensors", f'{{"a": {entry([8], 0, 32)}, "b": {entry([8], 0, 32)}}}')
    assert refused_by_safetensors(path)
    assert "tensor b: bytes 0..32 do not follow on from tensor a's end at 32" in one_line_refusal(path)


def test_a_name_re_pointed_by_a_duplicate_key_is_refused(tmp_path: Path) -> None:
    header = f'{{"a": {entry([4], 0, 16)}, "b": {entry([4], 16, 32)}, "a": {entry([4], 16, 32)}}}'
    path = write_safetensors(tmp_path / "duplicate.safetensors", header)
    assert refused_by_safetensors(path)
    assert "'a' is given twice" in one_line_refusal(path)


def test_bytes_no_tensor_covers_are_refused(tmp_path: Path) -> None:
    path = write_safetensors(tmp_path / "short.safetensors", f'{{"a": {entry([4], 0, 16)}}}')
    assert refused_by_safetensors(path)
    assert "the tensors cover 16 of the file's 32 bytes of data" in one_line_refusal(path)


def test_a_shape_whose_element_count_passes_2_to_the_64_is_not_wrapped_to_nothing(tmp_path: Path) -> None:
    path = write_safetensors(tmp_path / "huge.safetensors", f'{{"a": {entry([2**32, 2**32], 0, 0)}}}', b"")
    assert refused_by_safetensors(path)
    assert f"0 bytes for {2**64} float32 elements" in one_line_refusal(path)


def test_a_header_of_endless_empty_entries_is_refused(tmp_path: Path) -> None:
    """The library accepts this one (after seconds); here the count of entries is bounded (no timing asserted)."""
    empty = entry([0], 0, 0)
    header = "{" + ", ".join(f'"t{i}": {empty}' for i in range(200_000)) + "}"
    path = write_safetensors(tmp_path / "endless.safetensors", header, b"")
    assert "more than 100000 entries, far more than a model's tensors" in one_line_refusal(path)


@pytest.fixture(scope="module")
def vocab_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tokenizer(tmp_path_factory.mktemp("bpe"))


def test_an_empty_merges_file_is_refused_in_one_line(tmp_path: Path, vocab_dir: Path) -> None:
    shutil.copy(vocab_dir / "vocab.json", tmp_path / "vocab.json")
    (tmp_path / "merges.txt").write_bytes(b"")
    with pytest.raises(UserError) as caught:
        Tokenizer.from_dir(tmp_path)
    assert str(caught.value) == f"{tmp_path / 'merges.txt'}: empty, so not a BPE merges file (an interrupted download? fetch it again)"


def test_a_merges_file_with_a_byte_order_mark_reads_as_without_it(tmp_path: Path, vocab_dir: Path) -> None:
    """transformers 4's GPT2Tokenizer skips the first line (the BOM's) unread; transformers 5 refuses such a file,
    so the comparison is with the file without its BOM."""
    shutil.copy(vocab_dir / "vocab.json", tmp_path / "vocab.json")
    (tmp_path / "merges.txt").write_bytes(b"\xef\xbb\xbf" + (vocab_dir / "merges.txt").read_bytes())
    _, transformers = torch_and_transformers()
    gpt2 = transformers.GPT2Tokenizer(
        str(vocab_dir / "vocab.json"), str(vocab_dir / "merges.txt"),
        bos_token="</s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>", add_prefix_space=False,
    )  # fmt: skip
    text = "Hello world! The quick brown fox, 42 times."
    ours = Tokenizer.from_dir(tmp_path).encode(text, add_bos=False)
    assert ours == gpt2.encode(text) == Tokenizer.from_dir(vocab_dir).encode(text, add_bos=False)
    assert len(ours) < len(text.encode())  # merged, not spelled out byte by byte


def test_an_index_with_an_empty_weight_map_says_so(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors.index.json").write_text('{"metadata": {}, "weight_map": {}}')
    with pytest.raises(UserError) as caught:
        weight_files(tmp_path)
    assert "its weight_map is empty" in str(caught.value) and "\n" not in str(caught.value)
