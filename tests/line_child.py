"""The console script for tests that drive ``-c`` on a pseudo-terminal, with two test hooks from the environment.

- ``LINE_CHILD_SENT``: a file that gets each message ChatSession.send passes to the
  model, as one JSON string a line (what was sent, not what was echoed).
- ``LINE_CHILD_SLOW``: seconds per token; the sampler then waits that long and always
  picks one ordinary token, so a reply runs until it is stopped (no end of text, no stop string).
"""

from __future__ import annotations

import json
import os
import time

from opt_tpu_tui import chat, generation
from opt_tpu_tui.cli import run

ORDINARY_TOKEN = 300  # a plain word piece of the demo model's vocabulary


def log_sent_messages(path: str) -> None:
    send = chat.ChatSession.send

    def logged(self, user, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        with open(path, "a", encoding="utf-8") as log:
            log.write(json.dumps(user) + "\n")
        return send(self, user, *args, **kwargs)

    chat.ChatSession.send = logged


def slow_endless_replies(seconds: float) -> None:
    class SlowSampler:
        def __init__(self, settings, vocab_limit=None) -> None:  # noqa: ANN001
            pass

        def __call__(self, logits, seen) -> int:  # noqa: ANN001
            time.sleep(seconds)
            return ORDINARY_TOKEN

    generation.Sampler = SlowSampler


if __name__ == "__main__":
    if os.environ.get("LINE_CHILD_SENT"):
        log_sent_messages(os.environ["LINE_CHILD_SENT"])
    if os.environ.get("LINE_CHILD_SLOW"):
        slow_endless_replies(float(os.environ["LINE_CHILD_SLOW"]))
    run()
