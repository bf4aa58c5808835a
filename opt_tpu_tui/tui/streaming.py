"""The hand-off between the reply worker thread and the UI loop, with no Textual import.

The worker appends text pieces to a :class:`TokenBuffer` under a lock (a few
microseconds, never blocking on the UI); a UI timer takes everything buffered
several times a second and renders it in one go. So the view re-renders at the
timer's pace, not per token, and the worker never waits for the UI.
"""

from __future__ import annotations

import threading
from typing import Callable, Tuple, Union

from opt_tpu_tui.backends.base import Backend
from opt_tpu_tui.engine import Engine
from opt_tpu_tui.tokenizer import Tokenizer

ModelLoader = Callable[[], Union[Tuple[Backend, Tokenizer], Engine]]  # typing's: evaluated at import, 3.8 has no abc subscripts
"""Builds the backend and tokenizer, or connects to a server (slow: run it in a worker). Tests inject a scripted one."""


class TokenBuffer:
    """Text pieces written by one thread and drained by another."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pieces: list[str] = []

    def push(self, piece: str) -> None:
        with self._lock:
            self._pieces.append(piece)

    def take(self) -> str:
        """Everything pushed since the last take, joined ("" if nothing)."""
        with self._lock:
            if not self._pieces:
                return ""
            text = "".join(self._pieces)
            self._pieces.clear()
        return text
