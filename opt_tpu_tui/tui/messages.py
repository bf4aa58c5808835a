"""Messages that cross from workers to the UI: the only way blocking code talks back."""

from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message

from opt_tpu_tui.backends.base import Backend
from opt_tpu_tui.devices import DeviceSample
from opt_tpu_tui.persist import Outcome
from opt_tpu_tui.tokenizer import Tokenizer


@dataclass
class ModelLoaded(Message):
    backend: Backend
    tokenizer: Tokenizer


@dataclass
class ModelFailed(Message):
    error: str


@dataclass
class ReplyFinished(Message):
    """The reply worker is done (finished, stopped or failed: the outcome and the turn say which)."""

    outcome: Outcome


@dataclass
class DeviceSampled(Message):
    sample: DeviceSample
