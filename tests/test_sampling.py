"""Sampling semantics against transformers' logits processors."""

from __future__ import annotations

import numpy as np
import pytest
from tiny import torch_and_transformers

from opt_tpu_tui.errors import UserError
from opt_tpu_tui.sampling import Sampler, SamplingSettings, softmax, warp

VOCAB = 500
SETTINGS = [
    SamplingSettings(temperature=0.7, top_k=50, top_p=0.9, repetition_penalty=1.1),
    SamplingSettings(temperature=1.3, top_k=0, top_p=0.5, repetition_penalty=1.0),
    SamplingSettings(temperature=0.5, top_k=7, top_p=1.0, repetition_penalty=1.8),
    SamplingSettings(temperature=1.0, top_k=1, top_p=0.95, repetition_penalty=1.3),
    SamplingSettings(temperature=2.0, top_k=400, top_p=0.99, repetition_penalty=1.0),
]


def reference_scores(logits: np.ndarray, settings: SamplingSettings, seen: list[int]) -> np.ndarray:
    torch, transformers = torch_and_transformers()
    processors = transformers.LogitsProcessorList()
    if settings.repetition_penalty != 1.0:
        processors.append(transformers.RepetitionPenaltyLogitsProcessor(settings.repetition_penalty))
    processors.append(transformers.TemperatureLogitsWarper(settings.temperature))
    if settings.top_k:
        processors.append(transformers.TopKLogitsWarper(settings.top_k))
    if settings.top_p < 1.0:
        processors.append(transformers.TopPLogitsWarper(settings.top_p))
    out = processors(torch.tensor([seen]), torch.tensor(logits[None]))
    return out[0].numpy()


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: f"T{s.temperature}-k{s.top_k}-p{s.top_p}-r{s.repetition_penalty}")
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("vocab, spread", [(VOCAB, 3.0), (50_265, 3.0), (50_265, 0.5)])
def test_warped_scores_equal_transformers(settings: SamplingSettings, seed: int, vocab: int, spread: float) -> None:
    """Small and OPT-sized vocabularies; a flat one makes top-p fall back to sorting everything."""
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal(vocab) * spread).astype(np.float32)
    seen = rng.integers(0, vocab, size=40).tolist()
    ours = warp(logits, settings, seen)
    expected = reference_scores(logits, settings, seen)
    np.testing.assert_array_equal(np.isinf(ours), np.isinf(expected))
    finite = np.isfinite(expected)
    np.testing.assert_allclose(ours[finite], expected[finite], rtol=1e-6)


def test_warp_does_not_modify_the_backend_logits() -> None:
    logits = np.arange(10, dtype=np.float32)
    warp(logits, SETTINGS[0], [1, 2, 3])
    np.testing.assert_array_equal(logits, np.arange(10, dtype=np.float32))


def test_greedy_is_argmax_after_repetition_penalty() -> None:
    logits = np.array([0.0, 5.0, 4.9, -1.0], np.float32)
    assert Sampler(SamplingSettings(temperature=0, repetition_penalty=1.0))(logits, [1]) == 1
    assert Sampler(SamplingSettings(temperature=0, repetition_penalty=1.2))(logits, [1]) == 2


def test_padding_rows_past_the_tokenizer_are_never_chosen() -> None:
    logits = np.array([0.0, 1.0, 9.0, 9.5], np.float32)
    assert Sampler(SamplingSettings(temperature=0, repetition_penalty=1.0), vocab_limit=3)(logits, []) == 2
    sampler = Sampler(SamplingSettings(temperature=5.0, top_k=0, top_p=1.0, seed=3), vocab_limit=3)
    assert max(sampler(logits, []) for _ in range(500)) <= 2


def test_draws_follow_the_warped_distribution_and_repeat_with_a_seed() -> None:
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05], np.float32))
    settings = SamplingSettings(temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1.0, seed=42)
    draws = [Sampler(settings)(logits, []) for _ in range(3)]
    assert len(set(draws)) == 1  # a new sampler with the same seed draws the same token
    sampler = Sampler(settings)
    counts = np.bincount([sampler(logits, []) for _ in range(20_000)], minlength=4) / 20_000
    np.testing.assert_allclose(counts, softmax(logits), atol=0.015)
    top_p = Sampler(SamplingSettings(temperature=1.0, top_k=0, top_p=0.7, repetition_penalty=1.0, seed=1))
    assert set(top_p(logits, []) for _ in range(2000)) == {0, 1}


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(temperature=-0.1), "temperature must be between 0 and 5"),
        (dict(top_p=0.0), "top_p must be between"),
        (dict(top_k=-1), "top_k must be between"),
        (dict(max_new_tokens=0), "max_new_tokens must be between 1"),
        (dict(repetition_penalty=0.5), "repetition_penalty must be between 1 and 2"),
        (dict(max_new_tokens=2.5), "max_new_tokens must be a whole number"),
        (dict(seed=-3), "seed must be between 0"),
        (dict(seed=2**32), "seed must be between 0 and 4294967295, got 4294967296"),
    ],
)
def test_out_of_range_settings_are_refused(change: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        SamplingSettings(**change).validate()


@pytest.mark.parametrize("temperature", [1e-45, 1e-30, 1e-6])
@pytest.mark.parametrize("penalty", [1.0, 1.3])
def test_a_temperature_too_small_to_divide_by_is_greedy(temperature: float, penalty: float) -> None:
    logits = np.random.default_rng(0).standard_normal(VOCAB).astype(np.float32) * 10
    settings = SamplingSettings(temperature=temperature, top_k=0, top_p=1.0, repetition_penalty=penalty, seed=1)
    greedy = Sampler(SamplingSettings(temperature=0, repetition_penalty=penalty))(logits, [3, 4])
    assert [Sampler(settings)(logits, [3, 4]) for _ in range(5)] == [greedy] * 5
    assert np.isfinite(warp(logits, settings, [3, 4])).all()


@pytest.mark.parametrize("temperature, top_k", [(0, 0), (0.7, 50), (0.7, 0)])
def test_nan_logits_are_a_clear_error(temperature: float, top_k: int) -> None:
    logits = np.random.default_rng(0).standard_normal(VOCAB).astype(np.float32)
    logits[7] = np.nan
    with pytest.raises(UserError, match="the model gave NaN logits"):
        Sampler(SamplingSettings(temperature=temperature, top_k=top_k, seed=0))(logits, [])
