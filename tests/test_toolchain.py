"""The TPU-MLIR recipe end to end: Top MLIR -> tpuc-opt -> bmodel -> libbmrt in the BM1684X simulator."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from opt_tpu_tui import toolchain
from opt_tpu_tui.backends import bmrt_lib
from opt_tpu_tui.backends.bmrt_lib import Runtime
from opt_tpu_tui.cli import main
from opt_tpu_tui.config import Settings, save_settings
from opt_tpu_tui.converted import BMODEL, MANIFEST, TOKENIZER_FILES, HostEmbedding, Manifest
from opt_tpu_tui.errors import UserError
from opt_tpu_tui.model import load_weights

MODULE = """module @{name} attributes {{module.weight_file = "{name}_top_weights.npz", module.platform = "LLM", \
module.state = "TOP_F32", module.chip = "ALL", module.top_run_mode = "STATIC"}} {{
  func.func @main(%arg0: tensor<1x16x64xf32> loc(unknown)) -> tensor<1x16x64xf32> {{
    %0 = "top.None"() : () -> none loc(#loc)
    %1 = "top.Input"(%arg0) : (tensor<1x16x64xf32>) -> tensor<1x16x64xf32> loc(#loc1)
    %2 = "top.Weight"() : () -> tensor<64x64xf32> loc(#loc2)
    %3 = "top.Weight"() : () -> tensor<1x1x64xf32> loc(#loc3)
    %4 = "top.MatMul"(%1, %2, %3) {{do_relu = false}} : (tensor<1x16x64xf32>, tensor<64x64xf32>, tensor<1x1x64xf32>) \
-> tensor<1x16x64xf32> loc(#loc4)
    %5 = "top.Relu"(%4) : (tensor<1x16x64xf32>) -> tensor<1x16x64xf32> loc(#loc5)
    return %5 : tensor<1x16x64xf32> loc(#loc)
  }} loc(#loc)
}} loc(#loc)
#loc = loc(unknown)
#loc1 = loc("x")
#loc2 = loc("fc.weight")
#loc3 = loc("fc.bias")
#loc4 = loc("fc")
#loc5 = loc("out")
"""


@pytest.mark.parametrize("mode, group, tolerance", [("F16", 0, 3e-3), ("W8F16", 64, 3e-2), ("W4F16", 64, 2e-1)])
def test_matmul_relu_compiles_and_matches_numpy_in_the_simulator(
    tpu_runtime: Runtime, tmp_path: Path, mode: str, group: int, tolerance: float
) -> None:
    """Tolerances relative to the largest output, against fp32 weights (so they include weight quantisation)."""
    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((64, 64)) * 0.1).astype(np.float32)
    bias = (rng.standard_normal((1, 1, 64)) * 0.1).astype(np.float32)
    name = f"mm_{mode.lower()}"
    np.savez(tmp_path / f"{name}_top_weights.npz", **{"fc.weight": weight, "fc.bias": bias})
    (tmp_path / f"{name}.mlir").write_text(MODULE.format(name=name))
    bmodel = toolchain.compile_top(tmp_path / f"{name}.mlir", mode, group)
    tpu_runtime.load(bmodel)
    x = rng.standard_normal((1, 16, 64)).astype(np.float32)
    y = np.empty((1, 16, 64), np.float16)  # strip-io-quant makes the graph's inputs and outputs float16
    tpu_runtime.launch(name, [x.astype(np.float16)], [y])
    expected = np.maximum(x @ weight + bias, 0)
    error = np.abs(y.astype(np.float32) - expected).max() / np.abs(expected).max()
    assert error < tolerance, error
    assert (y >= 0).all()  # the ReLU was kept (about half the pre-activations are negative)


def test_each_stage_of_a_combined_net_reads_with_the_shapes_it_was_compiled_with(tpu_runtime: Runtime, tmp_path: Path) -> None:
    """The same net compiled for 16 and for 8 rows, combined: one net with two stages.

    With bm_stage_info_t read in its old 16-byte layout, stage 1's shapes would be read
    from stage 0's device-memory pointers.
    """
    rng = np.random.default_rng(1)
    bmodels = []
    for rows in (16, 8):
        folder = tmp_path / f"rows{rows}"
        folder.mkdir()
        np.savez(folder / "mm_stages_top_weights.npz", **{"fc.weight": rng.standard_normal((64, 64)).astype(np.float32),
                                                          "fc.bias": rng.standard_normal((1, 1, 64)).astype(np.float32)})  # fmt: skip
        (folder / "mm_stages.mlir").write_text(MODULE.format(name="mm_stages").replace("1x16x64", f"1x{rows}x64"))
        bmodels.append(toolchain.compile_top(folder / "mm_stages.mlir", "F16"))
    tpu_runtime.load(toolchain.combine(bmodels, tmp_path / "stages.bmodel", tmp_path / "scratch"))
    net = tpu_runtime.net("mm_stages")
    assert sorted(net.stages) == [([(1, 8, 64)], [(1, 8, 64)]), ([(1, 16, 64)], [(1, 16, 64)])]
    assert (net.input_shapes, net.output_shapes) == net.stages[0]


def test_a_file_that_is_not_a_bmodel_is_refused(tpu_runtime: Runtime, tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.bmodel"
    bogus.write_bytes(b"not a bmodel" * 100)
    with pytest.raises(UserError, match="bogus.bmodel: bmrt could not load it"):
        tpu_runtime.load(bogus)


def test_a_failed_compile_names_the_graph_and_keeps_the_log(tpu_runtime: Runtime, tmp_path: Path) -> None:
    (tmp_path / "broken.mlir").write_text("module @broken { this is not MLIR }")
    with pytest.raises(UserError, match="compiling graph broken .F16. failed; the log is .*broken.compile.log"):
        toolchain.compile_top(tmp_path / "broken.mlir", "F16")
    assert (tmp_path / "broken.compile.log").stat().st_size > 0


def test_weights_fed_through_a_pipe_compile_to_the_same_bmodel_as_from_a_file(simulator: None, tmp_path: Path) -> None:
    """convert streams each graph's float32 weights into tpuc-opt (no disk for them): the same bmodel, byte for byte."""
    from opt_tpu_tui.convert.mlir import write_float32_npz

    rng = np.random.default_rng(2)
    weights = {"fc.weight": rng.standard_normal((64, 64)).astype(np.float16).T,  # as convert has them: float16 views
               "fc.bias": rng.standard_normal((1, 1, 64)).astype(np.float16)}  # fmt: skip
    bmodels = []
    for how in ("file", "pipe"):
        folder = tmp_path / how
        folder.mkdir()
        (folder / "mm_fed.mlir").write_text(MODULE.format(name="mm_fed"))
        if how == "file":
            with (folder / "mm_fed_top_weights.npz").open("wb") as out:
                write_float32_npz(out, weights)
            bmodels.append(toolchain.compile_top(folder / "mm_fed.mlir", "W4F16", 64))
        else:
            fed = []
            feed = lambda out: (fed.append(True), write_float32_npz(out, weights))  # noqa: E731
            bmodels.append(toolchain.compile_top(folder / "mm_fed.mlir", "W4F16", 64, feed=feed))
            assert fed == [True]
        assert not list(folder.glob("*.npz")), "every weights file, and the pipe, is gone"
    assert undated(bmodels[0].read_bytes()) == undated(bmodels[1].read_bytes())


def test_the_pipe_stays_open_for_a_reader_that_opens_it_twice(tmp_path: Path) -> None:
    """tpuc-opt opens its weights file, then opens it again and reads that: weights smaller than the pipe's
    buffer were written and the writer closed before the second open, which then waited for a writer forever."""
    fifo = tmp_path / "weights.npz"
    os.mkfifo(fifo)
    opens_twice = (
        "import sys, time\n"
        "first = open(sys.argv[1], 'rb')\n"
        "time.sleep(0.5)\n"  # the writer is done meanwhile: its 16 KB fit the pipe's buffer
        "second = open(sys.argv[1], 'rb')\n"
        "print(len(second.read()))\n"
    )
    reader = subprocess.Popen([sys.executable, "-c", opens_twice, str(fifo)], stdout=subprocess.PIPE, text=True)
    try:
        toolchain.feed_weights(fifo, lambda out: out.write(b"w" * 16384), reader)
        assert reader.communicate(timeout=30)[0].strip() == "16384"
    finally:
        reader.kill()
        reader.wait()


def undated(bmodel: bytes) -> bytes:
    """A bmodel with the time it was compiled at (ctime, in its header) blanked: two compiles a second apart differ there."""
    stamp = re.compile(rb"[A-Z][a-z]{2} [A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d \d{4}")
    assert len(stamp.findall(bmodel)) == 1, "the compile time is where it was"
    return stamp.sub(b"-" * 24, bmodel)


def test_a_compile_that_fails_before_reading_its_pipe_is_reported_not_waited_for(simulator: None, tmp_path: Path) -> None:
    """tpuc-opt ends on a module it cannot parse before it opens the weights: the feed is never called, the pipe goes."""
    (tmp_path / "broken.mlir").write_text(MODULE.format(name="broken").replace('"top.MatMul"', '"top.NoSuchOp"'))
    fed = []
    with pytest.raises(UserError, match="compiling graph broken .W4F16. failed"):
        toolchain.compile_top(tmp_path / "broken.mlir", "W4F16", 64, feed=fed.append)
    assert fed == []
    assert not (tmp_path / "broken_top_weights.npz").exists()


@pytest.fixture
def empty_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """The app's user cache, empty, and no runtime override; pip must not be run."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    for name in (toolchain.ROOT_ENV, bmrt_lib.LIB_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(toolchain.subprocess, "run", forbidden)
    return tmp_path / "cache" / "opt-tpu-tui"


def forbidden(*args: object, **kwargs: object) -> None:
    raise AssertionError("the tpu-mlir wheel was downloaded or unpacked")


def stand_in_conversion(checkpoint: Path, out: Path, context: int = 32) -> Path:
    """A converted model directory as far as the host is concerned; its bmodel is never loaded."""
    w = load_weights(checkpoint)
    out.mkdir()
    HostEmbedding.write(out, w.embed_tokens, w.embed_positions[: context + 2], w.project_in)
    for name in TOKENIZER_FILES:
        shutil.copy(checkpoint / name, out / name)
    (out / BMODEL).write_bytes(b"stand-in")
    (out / MANIFEST).write_text(Manifest(w.config, "f16", "f16", 0, context, 8, (context,), "tiny").to_json())
    return out


@pytest.mark.parametrize("saved", [False, True], ids=["--model, --backend bmrt", "last model used, --backend bmrt"])
def test_chatting_on_bmrt_never_downloads_and_names_the_command_that_does(
    empty_cache: Path, tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch, saved: bool,
) -> None:  # fmt: skip
    for name in ("download", "unpack"):
        monkeypatch.setattr(toolchain, name, forbidden)
    model = stand_in_conversion(tiny_model, tmp_path / "converted")
    if saved:  # the backend is not remembered with the model (--backend is per run): the flag is given
        save_settings(Settings(last_model=str(model)))
    args = ["--backend", "bmrt", "-p", "Hi"] if saved else ["--model", str(model), "--backend", "bmrt", "-p", "Hi"]
    assert main(args) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and f"`{toolchain.FETCH_COMMAND}`" in error, error


def fetch_simulator(wheel: Path, cache: Path) -> None:
    if main(["fetch-simulator"]) == 2:
        raise UserError("fetch-simulator failed")  # its message is on stderr, checked by the caller


@pytest.mark.parametrize(
    "use", [fetch_simulator, lambda wheel, cache: toolchain.unpack(wheel, cache / "unpacked")],
    ids=["fetch-simulator", "unpack"],
)  # fmt: skip
def test_a_cached_wheel_with_the_wrong_hash_is_refused_in_one_line(
    empty_cache: Path, capsys: pytest.CaptureFixture[str], use
) -> None:  # noqa: ANN001
    wheel = empty_cache / "downloads" / toolchain.WHEEL
    wheel.parent.mkdir(parents=True)
    wheel.write_bytes(b"PK not the real wheel")
    with pytest.raises(UserError) as raised:
        use(wheel, empty_cache)
    error = capsys.readouterr().err.strip() or str(raised.value)
    assert len(error.splitlines()) == 1 and str(wheel) in error and "SHA-256" in error, error
    assert not any(empty_cache.glob("tpu-mlir*")) and not list(empty_cache.glob("unpacked/*"))
