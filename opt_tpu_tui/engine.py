"""What a chat runs on: the engine interface, and its in-process implementation.

The chat controller (chat_controller.py) talks to one ``Engine``, whichever continues
its replies: ``LocalEngine`` holds the backend and tokenizer loaded in this process;
serve/client.py's ``RemoteEngine`` is a running ``opt-tpu-tui serve``. The two give
the same sessions (chat.TranscriptSession: the same prompts, the same turns left out
for lack of context) and the same device figures (devices.DeviceSample), so the UI
reads one path for both. No Textual here.
"""

from __future__ import annotations

from typing import Callable, Protocol

from opt_tpu_tui.backends.base import Backend, emits_tokens
from opt_tpu_tui.chat import ChatSession, Conversation, TranscriptSession
from opt_tpu_tui.devices import DeviceMonitor, DeviceSample
from opt_tpu_tui.tokenizer import Tokenizer


class Monitor(Protocol):
    """A source of device figures (devices.DeviceMonitor; tests inject a fixed one)."""

    def sample(self) -> DeviceSample: ...


class Engine(Protocol):
    """The model a chat replies with, wherever it runs."""

    @property
    def name(self) -> str:
        """Where it runs: the backend's name ("cpu", "bmrt", "sail") or the server's address."""

    @property
    def model_name(self) -> str: ...

    @property
    def context_length(self) -> int: ...

    @property
    def greedy_only(self) -> bool:
        """The device picks each token itself (no sampling settings apply)."""

    @property
    def remote(self) -> bool:
        """Its figures cross a network: read only while they are shown, and the backend is not ours to close."""

    def session(self, conversation: Conversation, preamble: str) -> TranscriptSession:
        """The chat of ``conversation`` (its turns are the conversation's own list, shared)."""

    def sample_device(self) -> DeviceSample:
        """The device's figures now (blocking: called off the UI thread)."""

    def close(self) -> None:
        """Free what the engine holds (a TPU's memory); a server's model stays loaded."""


class LocalEngine:
    """The backend and tokenizer loaded in this process."""

    remote = False

    def __init__(self, backend: Backend, tokenizer: Tokenizer, monitor_factory: Callable[[str], Monitor] = DeviceMonitor) -> None:
        self.backend, self.tokenizer = backend, tokenizer
        self._monitor_factory = monitor_factory
        self._monitor: Monitor | None = None  # made on the first sample: off the UI thread

    @property
    def name(self) -> str:
        return self.backend.name

    @property
    def model_name(self) -> str:
        return self.backend.model_name

    @property
    def context_length(self) -> int:
        return self.backend.context_length

    @property
    def greedy_only(self) -> bool:
        return emits_tokens(self.backend)

    def session(self, conversation: Conversation, preamble: str) -> TranscriptSession:
        return ChatSession(self.backend, self.tokenizer, preamble, conversation)

    def sample_device(self) -> DeviceSample:
        if self._monitor is None:
            self._monitor = self._monitor_factory(self.backend.name)
        return self._monitor.sample()

    def close(self) -> None:
        self.backend.close()
