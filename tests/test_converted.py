"""The converted model directory's manifest: what convert writes, the TPU backends read back or refuse."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from tiny import make_model

from opt_tpu_tui.converted import MANIFEST, Manifest, decode_windows
from opt_tpu_tui.errors import UserError
from opt_tpu_tui.model import load_weights


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Manifest:
    config = load_weights(make_model(tmp_path_factory.mktemp("hf"), tokenizer=False)).config
    return Manifest(config, "int4", "f16", 32, context=32, chunk=8, windows=(16, 32), source="tiny-opt")


def write(folder: Path, raw: dict) -> Path:
    (folder / MANIFEST).write_text(json.dumps(raw))
    return folder


def test_a_manifest_reads_back_as_written(manifest: Manifest, tmp_path: Path) -> None:
    (tmp_path / MANIFEST).write_text(manifest.to_json())
    assert Manifest.load(tmp_path) == manifest
    raw = json.loads(manifest.to_json())
    assert raw["quantization"] == "W4F16" and raw["nets"]["prefill"] == ["block_0", "block_1"]
    assert raw["nets"]["decode"] == ["block_cache_0_16", "block_cache_0_32", "block_cache_1_16", "block_cache_1_32"]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"format": 1}, "format 1, this version reads 2; convert the model again"),
        ({"chunk": 0}, "chunk 0 is out of range for context 32"),
        ({"chunk": 64}, "chunk 64 is out of range for context 32"),
        ({"context": 10**6}, "context 1000000 is out of range"),
        ({"mode": "int3"}, "unknown precision 'int3'"),
        ({"windows": [32, 16]}, "decode windows [32, 16] must rise to the context 32"),
        ({"windows": [16]}, "decode windows [16] must rise to the context 32"),
        ({"config": "opt"}, "not a manifest written by `opt-tpu-tui convert`"),
    ],
)
def test_a_manifest_from_another_version_or_damaged_is_one_clear_error(
    manifest: Manifest, tmp_path: Path, change: dict, message: str
) -> None:
    raw = {**json.loads(manifest.to_json()), **change}
    with pytest.raises(UserError, match=re.escape(message)) as error:
        Manifest.load(write(tmp_path, raw))
    assert str(error.value).startswith(str(tmp_path / MANIFEST)) and "\n" not in str(error.value)


def test_a_manifest_without_the_chunk_of_format_2_is_refused(manifest: Manifest, tmp_path: Path) -> None:
    raw = json.loads(manifest.to_json())
    del raw["chunk"]
    with pytest.raises(UserError, match="not a manifest written by `opt-tpu-tui convert` .*'chunk'"):
        Manifest.load(write(tmp_path, raw))


def test_a_manifest_that_is_not_json_names_the_file(tmp_path: Path) -> None:
    (tmp_path / MANIFEST).write_text("{ half")
    with pytest.raises(UserError, match="manifest.json: not valid JSON"):
        Manifest.load(tmp_path)


@pytest.mark.parametrize(
    "context, windows", [(512, [128, 256, 512]), (2048, [256, 512, 1024, 2048]), (64, [64]), (300, [150, 300])]
)
def test_decode_windows_halve_from_the_context(context: int, windows: list[int]) -> None:
    assert decode_windows(context) == windows
