"""What a chat runs on: the engine interface, and its in-process implementation.

The chat controller (chat_controller.py), ``-p`` and ``-c`` talk to one ``Engine``,
whichever continues their replies: ``LocalEngine`` holds the backend and tokenizer
loaded in this process; serve/client.py's ``RemoteEngine`` is a running ``opt-tpu-tui
serve``. The two give the same sessions (chat.TranscriptSession: the same prompts, the
same turns left out for lack of context) and the same device figures
(devices.DeviceSample), so the UI reads one path for both. No Textual here.
"""

from __future__ import annotations

from typing import Callable, Iterator, Protocol, Tuple, Union

from opt_tpu_tui.backends.base import Backend, emits_tokens
from opt_tpu_tui.chat import ChatSession, Conversation, TranscriptSession
from opt_tpu_tui.devices import DeviceMonitor, DeviceSample
from opt_tpu_tui.generation import Generation, GenerationStats
from opt_tpu_tui.sampling import SamplingSettings
from opt_tpu_tui.tokenizer import Tokenizer


class Monitor(Protocol):
    """A source of device figures (devices.DeviceMonitor; tests inject a fixed one)."""

    def sample(self) -> DeviceSample: ...


class Continuation(Protocol):
    """Text continued as it stands (generation.Generation, or a server's completion): iterate for pieces."""

    stats: GenerationStats

    def __iter__(self) -> Iterator[str]: ...


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

    def complete(self, text: str, settings: SamplingSettings) -> Continuation:
        """``text`` continued as it stands, no chat around it (``-p --raw``)."""

    def sample_device(self) -> DeviceSample:
        """The device's figures now (blocking: called off the UI thread)."""

    def close(self) -> None:
        """Free what the engine holds (a TPU's memory); a server's model stays loaded."""


ModelLoader = Callable[[], Union[Tuple[Backend, Tokenizer], Engine]]  # typing's: evaluated at import, 3.8 has no abc subscripts
"""Builds the backend and tokenizer, or connects to a server (slow: the UI runs it in a worker). Tests inject a scripted one."""


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

    def complete(self, text: str, settings: SamplingSettings) -> Continuation:
        return Generation(self.backend, self.tokenizer, self.tokenizer.encode(text), settings)

    def sample_device(self) -> DeviceSample:
        if self._monitor is None:
            self._monitor = self._monitor_factory(self.backend.name)
        return self._monitor.sample()

    def close(self) -> None:
        self.backend.close()
