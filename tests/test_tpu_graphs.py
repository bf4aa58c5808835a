"""OPT's TPU graphs, compiled with tpuc-opt and run in the BM1684X simulator, against the numpy model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tiny import make_model

from opt_tpu_tui import toolchain
from opt_tpu_tui.backends.bmrt_lib import Runtime
from opt_tpu_tui.convert.graphs import decode_block, decode_mask, prefill_block, prefill_mask
from opt_tpu_tui.model import load_weights
from opt_tpu_tui.model.forward import PreparedLayer, Workspace, block

CONTEXT, PROMPT = 32, 11


@pytest.mark.parametrize("variant", [{}, {"do_layer_norm_before": False}], ids=["pre-ln", "post-ln"])
def test_f16_prefill_block_matches_the_numpy_layer(tpu_runtime: Runtime, tmp_path: Path, variant: dict) -> None:
    weights = load_weights(make_model(tmp_path / "model", tokenizer=False, **variant))
    config = weights.config
    layer = PreparedLayer.from_weights(weights.layers[0], config.head_dim)
    name = f"block_0_{'pre' if config.do_layer_norm_before else 'post'}"  # one runtime: net names must differ
    graph, outputs = prefill_block(name, layer, config, CONTEXT)
    tpu_runtime.load(toolchain.compile_top(graph.write(tmp_path / name, outputs), "F16"))

    x = np.random.default_rng(0).standard_normal((1, CONTEXT, config.hidden_size)).astype(np.float32)
    out_types = tpu_runtime.io_dtypes(name)[1]
    kv_shape = (1, CONTEXT, config.num_attention_heads, config.head_dim)
    hidden, k, v = (np.empty(s, t) for s, t in zip([x.shape, kv_shape, kv_shape], out_types))
    tpu_runtime.launch(name, [x, prefill_mask(CONTEXT, PROMPT)], [hidden, k, v])

    shape = (config.num_attention_heads, CONTEXT, config.head_dim)
    k_ref, v_ref, h_ref = np.zeros(shape, np.float32), np.zeros(shape, np.float32), x[0, :PROMPT].copy()
    block(h_ref, layer, k_ref, v_ref, 0, config.do_layer_norm_before, Workspace(config, PROMPT, PROMPT))
    # float16 activations: about 1e-3 of the values' scale (measured 0.03-0.1 % on hidden, 2e-3 on K/V)
    assert np.abs(hidden[0, :PROMPT] - h_ref).max() < 3e-3 * np.abs(h_ref).max()
    for got, ref in ((k, k_ref), (v, v_ref)):
        assert np.abs(got[0, :PROMPT].transpose(1, 0, 2) - ref[:, :PROMPT]).max() < 3e-3 * np.abs(ref).max() + 2e-3


@pytest.mark.parametrize("variant", [{}, {"do_layer_norm_before": False}], ids=["pre-ln", "post-ln"])
def test_f16_decode_block_over_the_cache_matches_the_numpy_layer(tpu_runtime: Runtime, tmp_path: Path, variant: dict) -> None:
    weights = load_weights(make_model(tmp_path / "model", tokenizer=False, **variant))
    config = weights.config
    layer = PreparedLayer.from_weights(weights.layers[0], config.head_dim)
    name = f"block_cache_0_{'pre' if config.do_layer_norm_before else 'post'}"
    graph, outputs = decode_block(name, layer, config, CONTEXT)
    tpu_runtime.load(toolchain.compile_top(graph.write(tmp_path / name, outputs), "F16"))

    rng = np.random.default_rng(1)
    shape = (config.num_attention_heads, CONTEXT, config.head_dim)
    k_ref, v_ref = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
    prompt = rng.standard_normal((PROMPT, config.hidden_size)).astype(np.float32)
    block(prompt, layer, k_ref, v_ref, 0, config.do_layer_norm_before, Workspace(config, PROMPT, PROMPT))
    past_k, past_v = k_ref.transpose(1, 0, 2)[None].copy(), v_ref.transpose(1, 0, 2)[None].copy()  # [1, C, H, d]
    x = rng.standard_normal((1, 1, config.hidden_size)).astype(np.float32)

    out_types = tpu_runtime.io_dtypes(name)[1]
    kv_shape = (1, 1, config.num_attention_heads, config.head_dim)
    hidden, k, v = (np.empty(s, t) for s, t in zip([x.shape, kv_shape, kv_shape], out_types))
    tpu_runtime.launch(name, [x, decode_mask(CONTEXT, PROMPT), past_k, past_v], [hidden, k, v])

    h_ref = x[0].copy()
    block(h_ref, layer, k_ref, v_ref, PROMPT, config.do_layer_norm_before, Workspace(config, 1, PROMPT + 1))
    assert np.abs(hidden[0] - h_ref).max() < 3e-3 * np.abs(h_ref).max()
    assert np.abs(k[0, 0] - k_ref[:, PROMPT]).max() < 3e-3 * np.abs(k_ref).max() + 2e-3
    assert np.abs(v[0, 0] - v_ref[:, PROMPT]).max() < 3e-3 * np.abs(v_ref).max() + 2e-3
