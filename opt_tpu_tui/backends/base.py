"""The one protocol between the generator and an inference engine."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Backend(Protocol):
    """Something that turns token ids into next-token logits, keeping its own KV cache.

    A backend knows nothing of text, sampling or chat. ``prefill`` runs a whole prompt
    at positions 0..n-1, taking from the cache the K/V of the longest start of the prompt
    that it already holds (see ``reusable_prefix``), so the next turn of a chat runs only
    its new tokens; ``decode`` appends one token at the next position. Both return float32
    logits over ``vocab_size`` rows for the last position; the array may be a view into a
    buffer that the next call overwrites. A backend whose model picks the token itself (an
    OPT-TPU bmodel's lm_head ends in top-1) sets ``emits_tokens`` and returns that token id
    instead (``emits_tokens``): it decodes greedily, and sampling settings do not apply.
    A backend that can pick the greedy token when asked (``picks_argmax``: a converted model
    with a greedy head, run on the TPU) takes ``argmax_below=N`` in ``prefill`` and ``decode``
    and returns the id of the first largest logit among ids 0..N-1 instead of the logits, so
    that only an id leaves the device; ``generation`` asks for it when nothing else of the
    logits is needed.
    """

    name: str  # "cpu", "bmrt", "sail": shown in the UI
    model_name: str  # the model directory's name
    context_length: int  # the most tokens the cache holds
    vocab_size: int  # rows of the logits (OPT pads the embedding past the tokenizer)
    reused: int  # prompt tokens the last prefill found in the cache

    @property
    def length(self) -> int:
        """Tokens now in the cache."""
        ...

    def prefill(self, ids: list[int]) -> np.ndarray | int: ...

    def decode(self, token: int) -> np.ndarray | int: ...

    def close(self) -> None:
        """Free device memory or other resources; the backend is unusable afterwards."""
        ...


def emits_tokens(backend: object) -> bool:
    """Whether ``backend``'s prefill and decode return the next token's id (greedy, chosen on the device), not logits."""
    return bool(getattr(backend, "emits_tokens", False))


def picks_argmax(backend: object) -> bool:
    """Whether ``backend``'s prefill and decode take ``argmax_below`` (see ``Backend``)."""
    return bool(getattr(backend, "picks_argmax", False))


def reusable_prefix(cached: Sequence[int], ids: Sequence[int]) -> int:
    """How many leading ``ids`` a cache holding ``cached`` can keep: their common start.

    At most all but the last id, which must run again because its logits are needed. The
    K/V of a position depend only on the tokens up to it, so keeping them is exact.
    """
    limit = min(len(cached), len(ids) - 1)
    n = 0
    while n < limit and cached[n] == ids[n]:
        n += 1
    return n
