"""The server's engine: one backend, one device thread, a bounded FIFO queue. No HTTP here.

The device runs one generation at a time, so requests wait their turn in a queue of
at most ``queue_limit``; a request beyond it is refused at once (the HTTP layer says
429), not left to wait without bound. A job's ``cancel`` event stops its generation
between two tokens (generation.py checks it before each decode), so a client that goes
away frees the device after at most one more token; a job cancelled while it waits is
dropped when its turn comes. Events reach the caller through ``job.sink``, called on
the device thread: the HTTP layer hands them to its event loop.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from opt_tpu_tui.backends.base import Backend
from opt_tpu_tui.generation import Generation, GenerationStats
from opt_tpu_tui.sampling import SamplingSettings
from opt_tpu_tui.serve.metrics import Metrics
from opt_tpu_tui.serve.slots import Slots
from opt_tpu_tui.tokenizer import Tokenizer

LENGTH_REASONS = ("max_new_tokens", "context")  # GenerationStats.stop_reason values OpenAI calls "length"


class QueueFull(Exception):
    """The queue holds ``queue_limit`` jobs already."""


class EngineClosed(Exception):
    """The server is shutting down: no new jobs."""


@dataclass
class Piece:
    text: str
    tokens: int = 0  # the reply's tokens so far, this piece's included (a piece may hold several, or part of one)


@dataclass
class Done:
    stats: GenerationStats
    finish_reason: str  # "stop" or "length", as OpenAI names them


@dataclass
class Failed:
    error: BaseException


Event = Any  # Piece | Done | Failed (3.8 cannot subscript a Union alias at run time in dataclasses)


@dataclass
class Job:
    """One generation: the prompt's tokens and how to continue it; ``sink`` receives Piece..., then Done or Failed."""

    ids: list[int]
    settings: SamplingSettings
    sink: Callable[[Event], None]
    stop_strings: Sequence[str] = ()
    chat: bool = False  # a chat reply: leading white space is dropped, as chat.Reply does
    cancel: threading.Event = field(default_factory=threading.Event)
    queued_at: float = field(default_factory=time.perf_counter)


def finish_reason(stats: GenerationStats) -> str:
    return "length" if stats.stop_reason in LENGTH_REASONS else "stop"


class Engine:
    """Owns the backend and the one thread that uses it."""

    def __init__(
        self, backend: Backend, tokenizer: Tokenizer, slots: int = 1, queue_limit: int = 16,
        metrics: Metrics | None = None,
    ) -> None:  # fmt: skip
        self.backend = backend
        self.tokenizer = tokenizer
        self.slots = Slots(backend, slots)
        self.queue_limit = queue_limit
        self.metrics = metrics if metrics is not None else Metrics()
        self._queue: collections.deque[Job] = collections.deque()
        self._lock = threading.Condition()
        self._running: Job | None = None
        self._closing = False
        self.job_seconds = 1.0  # a job's time on the device, a moving average of the recent ones
        self._thread = threading.Thread(target=self._work, name="opt-tpu-tui device", daemon=True)
        self._thread.start()

    @property
    def waiting(self) -> int:
        return len(self._queue)

    @property
    def busy(self) -> bool:
        return self._running is not None

    def submit(self, job: Job) -> None:
        """Queue ``job``; QueueFull when ``queue_limit`` jobs wait already, EngineClosed while shutting down.

        Jobs whose client left while they waited give their place up now (they would be
        dropped when their turn came, but meanwhile refuse others). An idle device takes a
        job at once, so ``queue_limit`` 0 means one running and none waiting.
        """
        with self._lock:
            if self._closing:
                raise EngineClosed
            for gone in [queued for queued in self._queue if queued.cancel.is_set()]:
                self._queue.remove(gone)
                gone.sink(Done(GenerationStats(stop_reason="cancelled"), "stop"))
            if len(self._queue) >= self.queue_limit + (0 if self._running else 1):
                raise QueueFull
            self._queue.append(job)
            self.metrics.queue_depth.set(len(self._queue))
            self._lock.notify()

    def wait_estimate(self) -> float:
        """Seconds until a job queued now would start, from the recent jobs' length: for Retry-After."""
        return (len(self._queue) + (1 if self._running else 0)) * self.job_seconds

    def stop_all(self) -> None:
        """Refuse new jobs and cancel every one queued or running (shutdown: the running one ends within a token)."""
        with self._lock:
            self._closing = True
            for job in list(self._queue) + ([self._running] if self._running else []):
                job.cancel.set()
            self._lock.notify()

    def close(self, timeout: float = 30.0) -> None:
        """Stop everything, wait for the device thread, then free the backend."""
        self.stop_all()
        self._thread.join(timeout)
        self.backend.close()

    def _next(self) -> Job | None:
        with self._lock:
            while not self._queue and not self._closing:
                self._lock.wait()
            if not self._queue:
                return None
            self._running = self._queue.popleft()
            self.metrics.queue_depth.set(len(self._queue))
            return self._running

    def _work(self) -> None:
        while True:
            job = self._next()
            if job is None:
                return
            try:
                self._run(job)
            finally:
                with self._lock:
                    self._running = None

    def _run(self, job: Job) -> None:
        """Generate ``job`` on this (the device) thread, sending its events; never raises."""
        if job.cancel.is_set():  # the client left while it waited, or the server is stopping: it never ran
            job.sink(Failed(EngineClosed()) if self._closing else Done(GenerationStats(stop_reason="cancelled"), "stop"))
            return
        metrics, started = self.metrics, time.perf_counter()
        generation = Generation(self.backend, self.tokenizer, job.ids, job.settings, job.stop_strings, job.cancel)
        stats, last, tokens, text = generation.stats, started, 0, ""
        metrics.busy.set(1)
        try:
            self.slots.prepare(job.ids)
            for piece in generation:
                if job.chat and not text:
                    piece = piece.lstrip()
                if not piece:
                    continue
                now = time.perf_counter()
                if not text:
                    metrics.ttft.observe(now - job.queued_at)
                elif stats.new_tokens > tokens:
                    metrics.per_token.observe((now - last) / (stats.new_tokens - tokens))
                last, tokens, text = now, stats.new_tokens, text + piece
                job.sink(Piece(piece, stats.new_tokens))
        except BaseException as error:  # noqa: BLE001 - a broken backend must fail the request, not the thread
            self.slots.finish()
            metrics.busy.set(0)
            job.sink(Failed(error))
            return
        self.slots.finish()
        metrics.busy.set(0)
        self.job_seconds += (time.perf_counter() - started - self.job_seconds) / 4
        metrics.prefill.observe(stats.prefill_seconds)
        metrics.prompt_tokens.inc(stats.prompt_tokens)
        metrics.reused_tokens.inc(stats.cached_tokens)
        metrics.completion_tokens.inc(stats.new_tokens)
        job.sink(Done(stats, finish_reason(stats)))
