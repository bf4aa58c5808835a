"""A test-only backend that plays back a fixed token script (for stop, cancel and UI tests)."""

from __future__ import annotations

import time

import numpy as np


class ScriptedBackend:
    """Satisfies the Backend protocol; logits put all mass on the next scripted token.

    After the script runs out it repeats its last token. ``delay`` seconds are spent
    in each decode, to mimic a real model's pace.
    """

    name = "scripted"
    model_name = "scripted-model"

    def __init__(self, script: list[int], vocab_size: int, context_length: int = 64, delay: float = 0.0) -> None:
        self.script = script
        self.vocab_size = vocab_size
        self.context_length = context_length
        self.delay = delay
        self.length = 0
        self.prefills: list[list[int]] = []
        self._logits = np.zeros(vocab_size, np.float32)
        self._step = 0

    def _next(self) -> np.ndarray:
        self._logits[:] = 0
        self._logits[self.script[min(self._step, len(self.script) - 1)]] = 10.0
        self._step += 1
        return self._logits

    def prefill(self, ids: list[int]) -> np.ndarray:
        self.prefills.append(list(ids))
        self.length, self._step = len(ids), 0
        return self._next()

    def decode(self, token: int) -> np.ndarray:
        if self.length >= self.context_length:
            raise RuntimeError("decode past the context")
        time.sleep(self.delay)
        self.length += 1
        return self._next()

    def close(self) -> None:
        pass
