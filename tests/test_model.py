"""The numpy OPT against transformers' OPTForCausalLM on the same random weights."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file
from tiny import TINY, make_model, opt_parameters, torch_and_transformers

from opt_tpu_tui.model import load_weights
from opt_tpu_tui.model.forward import OPTModel

SHAPES = {
    "pre-ln": {},
    "post-ln-projections": dict(do_layer_norm_before=False, hidden_size=48, word_embed_proj_dim=32),
    "no-bias-no-affine": dict(enable_bias=False, layer_norm_elementwise_affine=False),
    "odd-heads": dict(hidden_size=60, num_attention_heads=5, num_hidden_layers=3, ffn_dim=96),
    "untied-no-final-ln": dict(tie_word_embeddings=False, _remove_final_layer_norm=True),
}
PROMPT = [2, 17, 250, 31, 99, 5, 301, 44, 7]


@pytest.fixture(scope="module", params=SHAPES, ids=list(SHAPES))
def pair(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    _, transformers = torch_and_transformers()
    directory = make_model(tmp_path_factory.mktemp(request.param), tokenizer=False, **SHAPES[request.param])
    return OPTModel(load_weights(directory)), transformers.OPTForCausalLM.from_pretrained(directory).eval()


def reference_logits(model, ids: list[int]) -> np.ndarray:
    torch, _ = torch_and_transformers()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


def test_greedy_64_tokens_equal_transformers_generate(pair) -> None:
    torch, _ = torch_and_transformers()
    model, reference = pair
    with torch.no_grad():
        out = reference.generate(torch.tensor([PROMPT]), max_new_tokens=64, min_new_tokens=64, do_sample=False)
    expected = out[0, len(PROMPT) :].tolist()
    tokens, logits = [], model.prefill(PROMPT)
    for _ in range(64):
        tokens.append(int(np.argmax(logits)))
        logits = model.decode(tokens[-1])
    assert tokens == expected


def test_prefill_and_decode_logits_match_transformers(pair) -> None:
    model, reference = pair
    expected = reference_logits(reference, PROMPT)
    np.testing.assert_allclose(model.prefill(PROMPT[:4]), expected[3], atol=1e-4, rtol=1e-4)
    for position in range(4, len(PROMPT)):
        np.testing.assert_allclose(model.decode(PROMPT[position]), expected[position], atol=1e-4, rtol=1e-4)


def test_decode_after_prefill_equals_longer_prefill(pair) -> None:
    model, _ = pair
    model.prefill(PROMPT[:5])
    for token in PROMPT[5:]:
        stepped = model.decode(token).copy()
    np.testing.assert_allclose(stepped, model.prefill(PROMPT), atol=1e-4, rtol=1e-5)


def test_prefill_after_a_kept_start_matches_transformers(pair) -> None:
    model, reference = pair
    expected = reference_logits(reference, PROMPT)
    model.prefill([*PROMPT[:4], 1, 1, 1])  # the cache's positions 4..6 hold other tokens
    np.testing.assert_allclose(model.prefill(PROMPT[4:], start=4), expected[-1], atol=1e-4, rtol=1e-4)
    assert model.length == len(PROMPT)
    with pytest.raises(ValueError, match="cannot keep 10 positions"):
        model.prefill(PROMPT[:1], start=10)


def test_prefill_of_the_full_context_and_overflow(tmp_path: Path) -> None:
    model = OPTModel(load_weights(make_model(tmp_path, tokenizer=False)), context=12)
    model.prefill(list(range(3, 14)))
    model.decode(5)
    assert model.length == 12
    with pytest.raises(Exception, match="context overflow"):
        model.decode(5)


def test_decode_step_allocates_no_arrays(tmp_path: Path) -> None:
    """A token step writes into preallocated buffers; numpy's ufunc machinery may allocate a little."""
    directory = make_model(
        tmp_path, tokenizer=False, vocab_size=4000, hidden_size=2048, num_attention_heads=16, ffn_dim=2048,
        num_hidden_layers=1,
    )  # fmt: skip
    model = OPTModel(load_weights(directory))
    model.prefill(PROMPT)
    model.decode(3)  # warm up
    tracemalloc.start()
    try:
        for token in range(10, 40):
            tracemalloc.clear_traces()  # zeroes the current and peak counts (reset_peak is 3.9+)
            model.decode(token)
            peak = tracemalloc.get_traced_memory()[1]
            assert peak < 6144, f"a decode step allocated {peak} bytes (one hidden row is 8 KiB)"
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("shape", SHAPES)
def test_the_numpy_written_checkpoint_is_the_one_transformers_writes(shape: str, tmp_path: Path) -> None:
    """Without torch (Python 3.8) tests/tiny.py writes checkpoints from numpy: the same tensors, loading cleanly."""
    torch, transformers = torch_and_transformers()
    from tiny import random_weights, save_opt

    config = {**TINY, **SHAPES[shape]}
    config.setdefault("word_embed_proj_dim", config["hidden_size"])
    model = transformers.OPTForCausalLM(transformers.OPTConfig(**config))
    model.save_pretrained(tmp_path / "hf", safe_serialization=True)
    saved = load_file(str(tmp_path / "hf" / "model.safetensors"))
    assert {name: tuple(value.shape) for name, value in saved.items()} == opt_parameters(config)
    save_opt(tmp_path / "np", config, random_weights(config, seed=0))
    loaded, info = transformers.OPTForCausalLM.from_pretrained(tmp_path / "np", output_loading_info=True)
    assert not any(info.values()), info
    with torch.no_grad():
        expected = loaded(torch.tensor([PROMPT])).logits[0].numpy()
    np.testing.assert_allclose(OPTModel(load_weights(tmp_path / "np")).prefill(PROMPT), expected[-1], atol=1e-4, rtol=1e-4)
