"""A test-only backend that plays back a fixed token script (for stop, cancel and UI tests)."""

from __future__ import annotations

import time

import numpy as np

from opt_tpu_tui.backends.base import reusable_prefix


class ScriptedBackend:
    """Satisfies the Backend protocol; logits put all mass on the next scripted token.

    After the script runs out it repeats its last token. ``delay`` seconds are spent
    in each decode, to mimic a real model's pace. It counts reused prompt tokens as a
    real backend does.
    """

    name = "scripted"
    model_name = "scripted-model"

    def __init__(self, script: list[int], vocab_size: int, context_length: int = 64, delay: float = 0.0) -> None:
        self.script = script
        self.vocab_size = vocab_size
        self.context_length = context_length
        self.delay = delay
        self.ids: list[int] = []
        self.reused = 0
        self.closed = False
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
        self.reused = reusable_prefix(self.ids, ids)
        self.ids, self._step = list(ids), 0
        return self._next()

    def decode(self, token: int) -> np.ndarray:
        if self.length >= self.context_length:
            raise RuntimeError("decode past the context")
        time.sleep(self.delay)
        self.ids.append(token)
        return self._next()

    @property
    def length(self) -> int:
        return len(self.ids)

    def close(self) -> None:
        self.closed = True


class GreedyScriptedBackend(ScriptedBackend):
    """The same script from a backend whose model picks the token itself (as an OPT-TPU bmodel): ids, not logits."""

    emits_tokens = True

    def _next(self) -> int:  # type: ignore[override]
        return int(np.argmax(super()._next()))


class ArgmaxScriptedBackend(ScriptedBackend):
    """The same script from a backend that picks the greedy token when asked (``picks_argmax``, as a
    converted model's greedy head does on the TPU); ``asked`` records each call's ``argmax_below``."""

    picks_argmax = True

    def __init__(self, script: list[int], vocab_size: int, context_length: int = 64) -> None:
        super().__init__(script, vocab_size, context_length)
        self.asked: list[int | None] = []

    def _pick(self, logits: np.ndarray, argmax_below: int | None) -> np.ndarray | int:
        self.asked.append(argmax_below)
        return logits if argmax_below is None else int(np.argmax(logits[:argmax_below]))

    def prefill(self, ids: list[int], argmax_below: int | None = None) -> np.ndarray | int:  # type: ignore[override]
        return self._pick(super().prefill(ids), argmax_below)

    def decode(self, token: int, argmax_below: int | None = None) -> np.ndarray | int:  # type: ignore[override]
        return self._pick(super().decode(token), argmax_below)
