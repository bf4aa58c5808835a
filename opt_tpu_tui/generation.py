"""The decode loop: prefill, then sample and decode token by token until a stop.

Backend-agnostic: a backend only supplies logits (or, for a model that picks greedily
on the device, the token itself). The loop streams text pieces,
holds back text that might be the start of a stop string, checks a cancel event
between tokens, and keeps live timing for the UI's stats pane.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from opt_tpu_tui.backends.base import Backend, emits_tokens, picks_argmax
from opt_tpu_tui.errors import UserError
from opt_tpu_tui.sampling import Sampler, SamplingSettings
from opt_tpu_tui.tokenizer import Tokenizer

STOP_WORDS = {  # GenerationStats.stop_reason -> what the user reads (-p's stats line, the mark under a reply)
    "eos": "end of text",
    "max_new_tokens": "max new tokens",
    "context": "context full",
    "stop_string": "stop string",
    "cancelled": "stopped",
}


def stop_words(reason: str | None) -> str:
    """How a generation ended, in words (the internal names are for code and tests)."""
    return STOP_WORDS.get(reason or "", reason or "unknown")


def check_prompt_length(tokens: int, context: int) -> None:
    """A UserError for a prompt of ``tokens`` that leaves no room in the ``context`` (the one wording, in-process
    and through a server: its client counts with the server model's tokenizer before it asks)."""
    if tokens == 0:
        raise UserError("the prompt is empty")
    if tokens >= context:
        raise UserError(f"the prompt is {tokens} tokens, but the context holds {context}: shorten it")


@dataclass
class GenerationStats:
    """Live figures of one generation, updated as tokens come out."""

    prompt_tokens: int = 0
    cached_tokens: int = 0  # of the prompt, found in the backend's cache and not run again
    new_tokens: int = 0
    prefill_seconds: float = 0.0
    decode_steps: int = 0  # backend.decode calls
    decode_seconds: float = 0.0  # wall time since prefill, sampling and detokenizing included
    stop_reason: str | None = None  # "eos", "max_new_tokens", "context", "stop_string" or "cancelled"
    context_used: int = 0

    @property
    def tokens_per_second(self) -> float:
        return self.decode_steps / self.decode_seconds if self.decode_seconds > 0 else 0.0


@dataclass
class Generation:
    """Iterate to run the generation and receive text pieces; ``stats`` and ``tokens`` fill in as it goes."""

    backend: Backend
    tokenizer: Tokenizer
    prompt_ids: Sequence[int]
    settings: SamplingSettings = field(default_factory=SamplingSettings)
    stop_strings: Sequence[str] = ()
    cancel: threading.Event | None = None
    stats: GenerationStats = field(default_factory=GenerationStats)
    tokens: list[int] = field(default_factory=list)

    def __iter__(self) -> Iterator[str]:
        return self._run()

    def _run(self) -> Iterator[str]:
        backend, stats = self.backend, self.stats
        n_prompt = len(self.prompt_ids)
        check_prompt_length(n_prompt, backend.context_length)
        stats.prompt_tokens = n_prompt
        sampler = Sampler(self.settings, vocab_limit=self.tokenizer.vocab_size)
        pick = argmax_request(backend, self.settings, self.tokenizer.vocab_size)
        chosen = emits_tokens(backend) or bool(pick)  # the model or the backend chose greedily
        sample = (lambda token, _: int(token)) if chosen else sampler
        seen = list(self.prompt_ids)
        stream = self.tokenizer.stream()
        stops = StopStringFilter(self.stop_strings)

        started = time.perf_counter()
        logits = backend.prefill(list(self.prompt_ids), **pick)
        decode_start = time.perf_counter()
        stats.prefill_seconds = decode_start - started
        stats.cached_tokens = backend.reused
        stats.context_used = backend.length
        while True:
            token = sample(logits, seen)
            if token == self.tokenizer.eos_id:
                stats.stop_reason = "eos"
                break
            self.tokens.append(token)
            seen.append(token)
            stats.new_tokens += 1
            piece = stops.feed(stream.push(token))
            if piece:
                yield piece
            if stops.stopped:
                stats.stop_reason = "stop_string"
                break
            if stats.new_tokens >= self.settings.max_new_tokens:
                stats.stop_reason = "max_new_tokens"
                break
            if backend.length >= backend.context_length:
                stats.stop_reason = "context"
                break
            if self.cancel is not None and self.cancel.is_set():
                stats.stop_reason = "cancelled"
                break
            logits = backend.decode(token, **pick)
            stats.decode_steps += 1
            stats.decode_seconds = time.perf_counter() - decode_start
            stats.context_used = backend.length
        if not stops.stopped:
            tail = stops.feed(stream.flush()) + stops.finish()
            if tail:
                yield tail


def argmax_request(backend: Backend, settings: SamplingSettings, vocab_limit: int) -> dict[str, int]:
    """The keyword that has ``backend`` return the greedy token instead of the logits, or {} to sample on the host.

    Asked when the settings take the largest logit and nothing else (``argmax_only``) and
    the backend can pick it (``picks_argmax``): on the TPU, an id crosses from the device
    instead of the whole vocabulary's logits. ``vocab_limit``: as the sampler, ids past the
    tokenizer's are padding rows and never chosen. Any other settings sample on the host
    exactly as before.
    """
    if settings.argmax_only and picks_argmax(backend) and not emits_tokens(backend):
        return {"argmax_below": vocab_limit}
    return {}


class StopStringFilter:
    """Passes text through until a stop string appears, holding back any possible start of one."""

    def __init__(self, stop_strings: Sequence[str]) -> None:
        self.stop_strings = [s for s in stop_strings if s]
        self.pending = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        if not self.stop_strings:
            return text
        self.pending += text
        hits = [i for i in (self.pending.find(s) for s in self.stop_strings) if i >= 0]
        if hits:
            self.stopped = True
            out, self.pending = self.pending[: min(hits)], ""
            return out
        keep = max((self._overlap(s) for s in self.stop_strings), default=0)
        out = self.pending[: len(self.pending) - keep]
        self.pending = self.pending[len(self.pending) - keep :]
        return out

    def finish(self) -> str:
        out, self.pending = self.pending, ""
        return out

    def _overlap(self, stop: str) -> int:
        """Length of the longest tail of ``pending`` that begins ``stop``."""
        for size in range(min(len(stop) - 1, len(self.pending)), 0, -1):
            if self.pending.endswith(stop[:size]):
                return size
        return 0
