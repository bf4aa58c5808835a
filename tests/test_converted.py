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


@pytest.fixture
def fake_toolchain(monkeypatch: pytest.MonkeyPatch) -> dict[str, bool]:
    """convert's calls into tpu-mlir answered at once: compiling writes a stand-in bmodel, unless ``fail`` is set."""
    from opt_tpu_tui import toolchain
    from opt_tpu_tui.convert import build

    state = {"fail": False}

    def compile_top(top_mlir: Path, mode: str, group_size: int = 0, scratch: Path | None = None, **_: object) -> Path:
        if state["fail"]:
            raise UserError(f"compiling graph {top_mlir.stem} ({mode}) failed")
        bmodel = top_mlir.with_suffix(".bmodel")
        bmodel.write_bytes(b"net")
        return bmodel

    class Combined:
        """convert's combiner, for stand-in bmodels: the result names how many nets went in."""

        def __init__(self, binary: Path) -> None:
            self.nets: list[str] = []

        def add(self, bmodel: Path) -> None:
            self.nets.append(bmodel.read_text())

        def close(self) -> None:
            pass

        def finish(self, out: Path, order: list[str]) -> None:
            out.write_bytes(b"bmodel from %d nets" % len(self.nets))

    for name in ("fetch", "root"):
        monkeypatch.setattr(toolchain, name, lambda: Path("/nonexistent"), raising=False)
    monkeypatch.setattr(toolchain, "compile_top", compile_top)
    monkeypatch.setattr(build, "Combined", Combined)
    return state


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    "files",
    [
        {"manifest.json": '{"name": "my pwa"}', "build/important.txt": "work"},  # a web project's manifest
        {"notes.txt": "mine"},
        {"manifest.json": '{"format": 2, "chip": "BM1684X", "nets": {}, "files": ["../outside.txt"]}'},
    ],
)
def test_convert_refuses_an_out_folder_that_is_not_an_earlier_conversion_and_deletes_nothing(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], fake_toolchain: dict, files: dict
) -> None:
    from opt_tpu_tui.cli import main

    out = tmp_path / "proj"
    for name, text in files.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(text)
    before = tree(out)
    fake_toolchain["fail"] = True  # as a conversion that fails at once would
    assert main(["convert", "--model", str(tiny_model), "--out", str(out), "--mode", "f16", "--context", "32"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "proj: exists and is not an empty folder or a converted model" in error
    assert tree(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["proj"]


def test_a_new_conversion_replaces_only_what_the_earlier_one_wrote_and_a_failed_one_leaves_it_working(
    tiny_model: Path, tmp_path: Path, fake_toolchain: dict
) -> None:
    from opt_tpu_tui.convert.build import convert

    out = tmp_path / "out"
    convert(tiny_model, out, "f16", context=32, log=lambda _: None)
    listed = json.loads((out / MANIFEST).read_text())["files"]
    assert sorted(listed) == sorted(p.name for p in out.iterdir() if p.name != MANIFEST)
    (out / "notes.txt").write_text("mine")
    (out / "embed_positions.npy").unlink()  # the new conversion writes it again
    old = tree(out)

    fake_toolchain["fail"] = True
    with pytest.raises(UserError, match="compiling graph"):
        convert(tiny_model, out, "f16", context=16, log=lambda _: None)
    assert tree(out) == old and Manifest.load(out).context == 32
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # the failed build beside it is gone

    fake_toolchain["fail"] = False
    convert(tiny_model, out, "f16", context=16, log=lambda _: None)
    assert Manifest.load(out).context == 16 and (out / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
