"""OPT's TPU graphs, compiled with tpuc-opt and run in the BM1684X simulator, against the numpy model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tiny import make_model

from opt_tpu_tui import toolchain
from opt_tpu_tui.backends.bmrt_lib import Runtime
from opt_tpu_tui.convert.graphs import block, block_mask
from opt_tpu_tui.model import load_weights
from opt_tpu_tui.model.forward import PreparedLayer, Workspace
from opt_tpu_tui.model.forward import block as numpy_block

CONTEXT, CACHED = 32, 11


@pytest.mark.parametrize("rows, real", [(8, 5), (1, 1)], ids=["prefill-chunk", "decode"])
@pytest.mark.parametrize("variant", [{}, {"do_layer_norm_before": False}], ids=["pre-ln", "post-ln"])
def test_f16_block_over_the_cache_matches_the_numpy_layer(
    tpu_runtime: Runtime, tmp_path: Path, variant: dict, rows: int, real: int
) -> None:
    """``real`` new tokens (the chunk's other rows are padding) after CACHED tokens in the cache."""
    weights = load_weights(make_model(tmp_path / "model", tokenizer=False, **variant))
    config = weights.config
    layer = PreparedLayer.from_weights(weights.layers[0], config.head_dim)
    name = f"block_{rows}_{'pre' if config.do_layer_norm_before else 'post'}"  # one runtime: net names must differ
    graph, outputs = block(name, layer, config, CONTEXT, rows)
    tpu_runtime.load(toolchain.compile_top(graph.write(tmp_path / name, outputs), "F16"))

    rng = np.random.default_rng(rows)
    shape = (config.num_attention_heads, CONTEXT, config.head_dim)
    k_ref, v_ref = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
    prompt = rng.standard_normal((CACHED, config.hidden_size)).astype(np.float32)
    numpy_block(prompt, layer, k_ref, v_ref, 0, config.do_layer_norm_before, Workspace(config, CACHED, CACHED))
    past_k, past_v = k_ref.transpose(1, 0, 2)[None].copy(), v_ref.transpose(1, 0, 2)[None].copy()  # [1, C, H, d]
    past_k[0, CACHED:] = past_v[0, CACHED:] = 7.0  # stale slots past the cached ones must not count
    x = rng.standard_normal((1, rows, config.hidden_size)).astype(np.float32)

    out_types = tpu_runtime.io_dtypes(name)[1]
    kv_shape = (1, rows, config.num_attention_heads, config.head_dim)
    hidden, k, v = (np.empty(s, t) for s, t in zip([x.shape, kv_shape, kv_shape], out_types))
    tpu_runtime.launch(name, [x, block_mask(CONTEXT, CACHED, rows), past_k, past_v], [hidden, k, v])

    h_ref = x[0, :real].copy()
    numpy_block(h_ref, layer, k_ref, v_ref, CACHED, config.do_layer_norm_before, Workspace(config, real, CACHED + real))
    # float16 activations: about 1e-3 of the values' scale (measured 0.03-0.1 % on hidden, 2e-3 on K/V)
    assert np.abs(hidden[0, :real] - h_ref).max() < 3e-3 * np.abs(h_ref).max()
    for got, ref in ((k, k_ref), (v, v_ref)):
        new = ref[:, CACHED : CACHED + real].transpose(1, 0, 2)  # [real, H, d]
        assert np.abs(got[0, :real] - new).max() < 3e-3 * np.abs(ref).max() + 2e-3


def test_block_mask_opens_the_cached_positions_and_the_new_rows_causally() -> None:
    mask = block_mask(6, 2, 3)[0, 0]
    open_ = mask == 0
    assert mask.shape == (3, 9)
    assert open_[:, :2].all() and not open_[:, 2:6].any()  # the cache: only its first 2 slots
    assert (open_[:, 6:] == np.tril(np.ones((3, 3), bool))).all()  # the new rows, causally


def test_the_streamed_weights_file_is_the_npz_numpy_and_zipfile_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """convert writes each graph's weights as a ZIP64 .npz without seeking (so into a pipe): numpy reads back
    every array as float32 equal to the float16 views it was given, and zipfile finds every CRC right; arrays
    bigger than a block of rows (written in several) included."""
    import io
    import zipfile

    from opt_tpu_tui.convert import mlir

    monkeypatch.setattr(mlir, "CHUNK_BYTES", 1024)  # several blocks per array
    rng = np.random.default_rng(3)
    arrays = {
        "w": rng.standard_normal((96, 40)).astype(np.float16).T,  # a transposed view, as convert has them
        "b": rng.standard_normal((1, 1, 40)).astype(np.float16),
        "s": np.array(1.5, dtype=np.float16),
    }
    out = io.BytesIO()
    mlir.write_float32_npz(out, arrays)
    with zipfile.ZipFile(io.BytesIO(out.getvalue())) as archive:
        assert archive.testzip() is None
    loaded = np.load(io.BytesIO(out.getvalue()))
    assert sorted(loaded.files) == sorted(arrays)
    for name, array in arrays.items():
        assert loaded[name].dtype == np.float32 and np.array_equal(loaded[name], array.astype(np.float32))
