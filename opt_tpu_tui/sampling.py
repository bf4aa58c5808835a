"""Next-token choice in numpy: repetition penalty, temperature, top-k, top-p, a seeded draw.

The order and the semantics are transformers' (``RepetitionPenaltyLogitsProcessor``,
then ``TemperatureLogitsWarper``, ``TopKLogitsWarper``, ``TopPLogitsWarper``), so
settings mean what users of Hugging Face models expect. Temperature 0 is greedy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields

import numpy as np

from opt_tpu_tui.errors import UserError

GREEDY_BELOW = 1e-5  # temperatures below this pick the likeliest token (see SamplingSettings.greedy)
# field -> (lowest, highest, what the UI stepper adds per press)
LIMITS: dict[str, tuple[float, float, float]] = {
    "max_new_tokens": (1, 4096, 16),
    "temperature": (0.0, 5.0, 0.05),
    "top_k": (0, 100_000, 5),
    "top_p": (0.01, 1.0, 0.05),
    "repetition_penalty": (1.0, 2.0, 0.05),
    "seed": (0, 2**32 - 1, 1),
}


@dataclass(frozen=True)
class SamplingSettings:
    max_new_tokens: int = 128
    temperature: float = 0.7  # 0 = greedy
    top_k: int = 50  # 0 = off
    top_p: float = 0.9  # 1 = off
    repetition_penalty: float = 1.1  # 1 = off
    seed: int | None = None  # None = a fresh draw each reply

    def validate(self) -> SamplingSettings:
        """Return self, or raise UserError naming the first field out of range."""
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None and f.name == "seed":
                continue
            integral = f.name in ("max_new_tokens", "top_k", "seed")
            kind = (int,) if integral else (int, float)
            if isinstance(value, bool) or not isinstance(value, kind):
                raise UserError(f"{f.name} must be {'a whole number' if integral else 'a number'}, got {value!r}")
            low, high, _ = LIMITS[f.name]
            if not low <= value <= high:
                raise UserError(f"{f.name} must be between {number(low)} and {number(high)}, got {number(value)}")
        return self

    def to_dict(self) -> dict[str, float | int | None]:
        return asdict(self)

    @property
    def greedy(self) -> bool:
        """Whether the likeliest token is taken: temperature 0, or too small to divide the logits by.

        Below ``GREEDY_BELOW`` a logit gap of 0.001 already makes the best token e**100 times
        likelier, and dividing by 1e-45 overflows to inf, whose softmax is NaN.
        """
        return self.temperature < GREEDY_BELOW

    @property
    def argmax_only(self) -> bool:
        """Whether the next token is the largest logit's, whatever came before (greedy, no repetition penalty).

        Then nothing else of the logits is needed, and a backend may pick the token itself
        (``generation``: a converted model's greedy head does it on the TPU).
        """
        return self.greedy and self.repetition_penalty == 1.0


def number(value: float) -> str:
    """``value`` as people write it: whole numbers in full (4294967295, not 4.29497e+09)."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def apply_repetition_penalty(logits: np.ndarray, seen: Sequence[int], penalty: float) -> np.ndarray:
    """Scores of tokens already seen: divided by the penalty if positive, multiplied if negative."""
    ids = np.unique(np.asarray(seen, dtype=np.int64))
    ids = ids[ids < logits.shape[-1]]
    scores = logits[ids]
    logits[ids] = np.where(scores > 0, scores / penalty, scores * penalty)
    return logits


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def candidates(logits: np.ndarray, settings: SamplingSettings, seen: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """The token ids that may be drawn and their warped scores (``logits`` is not modified).

    Top-k keeps the k highest scores and any tied with the k-th; top-p then keeps the
    smallest set of the highest whose probability reaches p (always at least one).
    Working on the candidates alone keeps top-p from sorting the whole vocabulary.
    """
    scores = np.array(logits, dtype=np.float32)
    if settings.repetition_penalty != 1.0:
        apply_repetition_penalty(scores, seen, settings.repetition_penalty)
    if settings.greedy:
        best = np.argmax(scores)
        return np.array([best]), scores[best : best + 1]
    scores /= np.float32(settings.temperature)
    ids = np.arange(len(scores))
    if 0 < settings.top_k < len(scores):
        kth = np.partition(scores, -settings.top_k)[-settings.top_k]
        ids = np.flatnonzero(scores >= kth)
    kept = scores[ids]
    if settings.top_p < 1.0:
        ids, kept = top_p_filter(ids, kept, settings.top_p)
    return ids, kept


def top_p_filter(ids: np.ndarray, scores: np.ndarray, p: float, head: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Drop the lowest tokens whose total probability stays within 1 - p (keeping at least one).

    When the ``head`` highest tokens already hold mass p, every other token is dropped
    for sure, so only the head is sorted rather than the whole vocabulary.
    """
    probs = softmax(scores)
    left_out = 0.0  # probability of the tokens outside the head, all of them dropped
    if len(scores) > head:
        top = np.argpartition(scores, -head)[-head:]
        if probs[top].sum() >= p:
            left_out = 1.0 - probs[top].sum()
            ids, scores, probs = ids[top], scores[top], probs[top]
    order = np.argsort(scores, kind="stable")  # ascending, as transformers sorts
    drop = left_out + np.cumsum(probs[order]) <= 1.0 - p
    drop[-1] = False
    return ids[order[~drop]], scores[order[~drop]]


def warp(logits: np.ndarray, settings: SamplingSettings, seen: Sequence[int]) -> np.ndarray:
    """The full score vector transformers would sample from: -inf for every filtered token."""
    if settings.greedy:
        scores = np.array(logits, dtype=np.float32)
        return apply_repetition_penalty(scores, seen, settings.repetition_penalty)
    ids, kept = candidates(logits, settings, seen)
    scores = np.full(len(logits), -np.inf, np.float32)
    scores[ids] = kept
    return scores


class Sampler:
    """Picks tokens for one reply; seeded once, so a fixed seed repeats a reply exactly."""

    def __init__(self, settings: SamplingSettings, vocab_limit: int | None = None) -> None:
        self.settings = settings
        self.vocab_limit = vocab_limit  # logits past the tokenizer's vocab are padding rows
        self.rng = np.random.default_rng(settings.seed)

    def __call__(self, logits: np.ndarray, seen: Sequence[int]) -> int:
        logits = logits[: self.vocab_limit]
        s = self.settings
        if s.argmax_only:
            return argmax_token(logits)  # the common greedy case allocates nothing
        if np.isnan(logits).any():
            raise not_a_number()
        ids, scores = candidates(logits, s, seen)
        cumulative = np.cumsum(softmax(scores))
        index = np.searchsorted(cumulative, self.rng.random() * cumulative[-1], side="right")
        return int(ids[min(index, len(ids) - 1)])


def argmax_token(logits: np.ndarray) -> int:
    """The greedy token: the first of the largest logits (numpy's argmax, which picks a NaN first: an error)."""
    token = int(np.argmax(logits))
    if np.isnan(logits[token]):
        raise not_a_number()
    return token


def not_a_number() -> UserError:
    """NaN logits: a broken model (or backend) must stop with a clear error, not reply at random."""
    return UserError("the model gave NaN logits: its weights or the backend are broken (try the cpu backend)")
