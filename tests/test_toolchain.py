"""The TPU-MLIR recipe end to end: Top MLIR -> tpuc-opt -> bmodel -> libbmrt in the BM1684X simulator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from opt_tpu_tui import toolchain
from opt_tpu_tui.backends.bmrt_lib import Runtime
from opt_tpu_tui.errors import UserError

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
