"""Messages that cross from workers to the UI: the only way blocking code talks back."""

from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message

from opt_tpu_tui.devices import DeviceSample
from opt_tpu_tui.engine import Engine
from opt_tpu_tui.persist import Outcome


@dataclass
class ModelLoaded(Message):
    engine: Engine


@dataclass
class ModelFailed(Message):
    error: str


@dataclass
class ReplyFinished(Message):
    """The reply worker is done (finished, stopped or failed: the outcome and the turn say which)."""

    outcome: Outcome


class FlushReply(Message, bubble=False):
    """Time to move the streamed text into the reply's view (widgets/conversation.py ReplyView.stream).

    A timer posts this rather than calling the flush itself: a timer's callback runs in
    the timer's own task, so it could change the reply's widgets in the middle of the
    screen finishing that reply (rows mounted after it had removed them were left
    behind). As a message it runs in the view's queue, under the lock the reply's end
    takes; one waiting flush stands for any number.
    """

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, FlushReply)


@dataclass
class DeviceSampled(Message):
    sample: DeviceSample
