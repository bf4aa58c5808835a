"""Helpers for driving the real Textual app with a scripted backend (tests only).

The scripted backend (tests/scripted.py) plays back the token ids of a fixed reply,
so the text that must appear on screen is known exactly; a delay per token makes a
reply slow enough to stop mid-stream.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from scripted import ScriptedBackend
from textual.pilot import Pilot
from textual.widget import Widget

from opt_tpu_tui.config import Settings
from opt_tpu_tui.devices import DeviceSample
from opt_tpu_tui.history import HistoryStore
from opt_tpu_tui.tokenizer import Tokenizer
from opt_tpu_tui.tui.app import OptTuiApp

REPLY = "Hello world, this is a small test of the tokenizer and the model."
FIXED_SAMPLE = DeviceSample("host", cpu_percent=12.0, mem_used=2 * 1024**3, mem_total=8 * 1024**3)


class FixedMonitor:
    """Device stats that never change, so snapshots are deterministic."""

    def __init__(self, backend_name: str = "scripted") -> None:
        self.backend_name = backend_name

    def sample(self) -> DeviceSample:
        return FIXED_SAMPLE


class RecordingBackend(ScriptedBackend):
    """A scripted backend that counts decode calls made after the reply's cancel event was set,
    and can fail on a chosen decode step."""

    def __init__(self, *args: object, fail_at: int | None = None, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.cancel: threading.Event | None = None
        self.decodes_after_cancel = 0
        self.decodes = 0
        self.fail_at = fail_at

    def decode(self, token: int):  # type: ignore[no-untyped-def]
        self.decodes += 1
        if self.fail_at is not None and self.decodes >= self.fail_at:
            raise RuntimeError("device lost")
        if self.cancel is not None and self.cancel.is_set():
            self.decodes_after_cancel += 1
        return super().decode(token)


def script_ids(tokenizer: Tokenizer, text: str = REPLY, eos: bool = True) -> list[int]:
    ids = tokenizer.encode(" " + text, add_bos=False)
    return ids + [tokenizer.eos_id] if eos else ids


def make_app(
    tokenizer: Tokenizer,
    *,
    script: list[int] | None = None,
    delay: float = 0.0,
    settings: Settings | None = None,
    history: Path | None = None,
    loader: Callable[[], tuple[object, Tokenizer]] | None = None,
    demo: bool = False,
    fail_at: int | None = None,
) -> tuple[OptTuiApp, RecordingBackend]:
    """The real app over a scripted backend; settings and history live under the test's XDG dirs."""
    backend = RecordingBackend(
        script if script is not None else script_ids(tokenizer),
        tokenizer.vocab_size,
        context_length=4096,
        delay=delay,
        fail_at=fail_at,
    )
    backend.model_name = "scripted-opt"
    store, warning = HistoryStore.open(history)
    app = OptTuiApp(
        settings=settings or Settings(),
        store=store,
        loader=loader or (lambda: (backend, tokenizer)),  # type: ignore[arg-type,return-value]
        model_label="scripted-opt",
        backend_label="scripted",
        demo=demo,
        warnings=[warning] if warning else [],
        monitor_factory=FixedMonitor,
    )
    return app, backend


async def wait_until(pilot: Pilot, condition: Callable[[], bool], timeout: float = 30.0) -> None:
    """Let the app run until ``condition()`` holds (fails the test after ``timeout`` seconds)."""
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the app")
        await pilot.pause(0.02)


async def ready(pilot: Pilot) -> None:
    """Wait for the model to load."""
    await wait_until(pilot, lambda: getattr(pilot.app.screen, "session", None) is not None)


async def submit(pilot: Pilot, text: str) -> None:
    """Type ``text`` in the prompt and press Enter (the reply goes on streaming)."""
    prompt = pilot.app.screen.query_one("#prompt")
    prompt.focus()
    prompt.insert(text)  # type: ignore[attr-defined]
    await pilot.press("enter")


async def send(pilot: Pilot, text: str) -> None:
    """Type ``text`` in the prompt, press Enter and wait for the reply to finish."""
    finished = pilot.app.screen.finished_replies
    await submit(pilot, text)
    await finish(pilot, finished + 1)


async def finish(pilot: Pilot, count: int) -> None:
    """Wait until ``count`` replies have ended."""
    await wait_until(pilot, lambda: pilot.app.screen.finished_replies >= count)
    await pilot.pause()


def shown(widget: Widget) -> str:
    """The text a widget draws now, row by row (what the user sees of it, borders aside)."""
    from textual.geometry import Region

    width, height = widget.outer_size
    return "\n".join(strip.text for strip in widget.render_lines(Region(0, 0, width, height)))
