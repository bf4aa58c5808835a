"""The one protocol between the generator and an inference engine."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Backend(Protocol):
    """Something that turns token ids into next-token logits, keeping its own KV cache.

    A backend knows nothing of text, sampling or chat. ``prefill`` forgets the cache
    and runs a whole prompt at positions 0..n-1; ``decode`` appends one token at the
    next position. Both return float32 logits over ``vocab_size`` rows for the last
    position; the array may be a view into a buffer that the next call overwrites.
    """

    name: str  # "cpu", "bmrt", "sail": shown in the UI
    model_name: str  # the model directory's name
    context_length: int  # the most tokens the cache holds
    vocab_size: int  # rows of the logits (OPT pads the embedding past the tokenizer)

    @property
    def length(self) -> int:
        """Tokens now in the cache."""
        ...

    def prefill(self, ids: list[int]) -> np.ndarray: ...

    def decode(self, token: int) -> np.ndarray: ...

    def close(self) -> None:
        """Free device memory or other resources; the backend is unusable afterwards."""
        ...
