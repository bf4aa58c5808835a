"""How the tests get the real sophon.sail: skip without a source, cache by what was built, fail on a bad source.

The build itself (minutes) is exercised by every sail test; these check the rules around it
without compiling anything.
"""

from __future__ import annotations

import io
import sys
import tarfile
from pathlib import Path

import pytest
import sail_build


def sail_source(folder: Path, text: str = "project(sail)\n") -> Path:
    """A stand-in source tree with headers beside it, enough for the rules (not to build)."""
    tree = folder / "sophon-sail"
    (tree / "python").mkdir(parents=True)
    (tree / "CMakeLists.txt").write_text(text)
    (tree / "python" / "__init__.py").write_text("")
    headers = folder / "libsophon-headers"
    headers.mkdir()
    for name in sail_build.HEADERS:
        (headers / name).write_text(f"/* {name} */\n")
    return tree


def test_without_a_source_the_sail_tests_skip_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(sail_build.SOURCE_ENV, raising=False)
    real = sail_build.RealSail()
    real.load()
    assert real.module is None and real.skip
    assert sail_build.SOURCE_ENV in (real.problem or "")


def test_the_cache_key_follows_the_source_headers_and_python(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tree = sail_source(tmp_path)
    headers, tool = sail_build.headers_dir(tree), tmp_path / "tpu_mlir"
    key = sail_build.cache_key(tree, headers, tool)
    assert sail_build.cache_key(tree, headers, tool) == key
    (tree / "CMakeLists.txt").write_text("project(sail) # changed\n")
    changed = sail_build.cache_key(tree, headers, tool)
    (headers / sail_build.HEADERS[0]).write_text("/* other */\n")
    assert len({key, changed, sail_build.cache_key(tree, headers, tool)}) == 3
    assert sail_build.cache_key(tree, headers, tmp_path / "elsewhere") != sail_build.cache_key(tree, headers, tool)
    monkeypatch.setattr(sys.implementation, "cache_tag", "cpython-38")
    assert sail_build.cache_key(tree, headers, tool).startswith("cpython-38-")


def test_a_cached_build_is_used_without_building(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tree = sail_source(tmp_path)
    key = sail_build.cache_key(tree, sail_build.headers_dir(tree), tmp_path / "tpu_mlir")
    cached = tmp_path / "cache" / key / "python"
    (cached / "sophon").mkdir(parents=True)
    (cached / "sophon" / "__init__.py").write_text("")

    def no_build(*args: object) -> Path:
        raise AssertionError("built again")

    monkeypatch.setattr(sail_build, "_compile", no_build)
    assert sail_build.built(tree, tmp_path / "tpu_mlir", tmp_path / "cache") == cached


def test_a_source_that_cannot_be_built_is_an_error_not_a_skip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(sail_build.SailBuildError, match="no such file"):
        sail_build.built(tmp_path / "missing.tar.gz", tmp_path, tmp_path / "cache")
    sail_source(tmp_path)
    not_a_tarball = tmp_path / "sophon-sail.tar.gz"
    not_a_tarball.write_bytes(b"not gzip")
    with pytest.raises(sail_build.SailBuildError, match="not a readable sophon-sail tarball"):
        sail_build._unpacked(not_a_tarball, tmp_path / "out")
    escaping = tmp_path / "escaping.tar"
    with tarfile.open(escaping, "w") as archive:
        member = tarfile.TarInfo("../outside.txt")
        archive.addfile(member, io.BytesIO(b""))
    with pytest.raises(sail_build.SailBuildError, match="outside the build folder"):
        sail_build._unpacked(escaping, tmp_path / "out2")
    monkeypatch.setenv(sail_build.HEADERS_ENV, str(tmp_path / "no-headers"))
    with pytest.raises(sail_build.SailBuildError, match=sail_build.HEADERS_ENV):
        sail_build.headers_dir(tmp_path / "sophon-sail")
