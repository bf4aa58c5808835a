"""The multi-line prompt box: Enter sends, ctrl+j inserts a newline.

Many terminals send the same byte for Enter and Shift+Enter, so the newline key is
ctrl+j (a line feed, which every terminal can type). Both bindings are priority
bindings so that TextArea's own Enter handling never sees the key.
"""

from __future__ import annotations

from textual.binding import Binding
from textual.message import Message
from textual.widgets import TextArea


class PromptInput(TextArea):
    BINDINGS = [
        Binding("enter", "submit", "Send", priority=True, id="prompt.send"),
        Binding("ctrl+j", "newline", "Line", priority=True, id="prompt.newline"),
    ]

    class Submitted(Message):
        def __init__(self, prompt: PromptInput, text: str) -> None:
            super().__init__()
            self.prompt = prompt
            self.text = text

    def __init__(self, **kwargs: object) -> None:
        super().__init__(
            placeholder="Message · enter sends · ctrl+j new line",
            soft_wrap=True, show_line_numbers=False, tab_behavior="focus", compact=True, **kwargs)  # type: ignore[arg-type]

    def action_submit(self) -> None:
        if self.text.strip():
            self.post_message(self.Submitted(self, self.text))

    def action_newline(self) -> None:
        self.insert("\n")
