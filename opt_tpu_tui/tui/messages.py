"""Messages that cross from workers to the UI: the only way blocking code talks back."""

from __future__ import annotations

from textual.message import Message

from opt_tpu_tui.backends.base import Backend
from opt_tpu_tui.devices import DeviceSample
from opt_tpu_tui.tokenizer import Tokenizer
from opt_tpu_tui.tui.streaming import ReplyJob


class ModelLoaded(Message):
    def __init__(self, backend: Backend, tokenizer: Tokenizer) -> None:
        super().__init__()
        self.backend = backend
        self.tokenizer = tokenizer


class ModelFailed(Message):
    def __init__(self, error: str) -> None:
        super().__init__()
        self.error = error


class ReplyFinished(Message):
    """The reply worker is done (finished, stopped or failed: see ``job.error`` and the turn)."""

    def __init__(self, job: ReplyJob) -> None:
        super().__init__()
        self.job = job


class DeviceSampled(Message):
    def __init__(self, sample: DeviceSample) -> None:
        super().__init__()
        self.sample = sample
