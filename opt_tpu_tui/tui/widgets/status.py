"""The one-line status at the top of the chat: model, context in use, state, the help key.

Fed by reactives: setting a value to what it already is repaints nothing, so the line
costs bytes only when something on it changes.
"""

from __future__ import annotations

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from opt_tpu_tui.safe_text import terminal_safe


class StatusLine(Widget):
    model = reactive("")
    backend = reactive("")
    demo = reactive(False)
    context_used = reactive(0)
    context_size = reactive(0)  # 0 while no model is loaded
    state = reactive("loading model…")

    def render(self) -> Text:
        parts = [terminal_safe(f"{self.model} on {self.backend}")]
        if self.demo:
            parts.append("DEMO model")
        if self.context_size:
            parts.append(f"context {self.context_used}/{self.context_size}")
        parts += [self.state, "f1 help"]
        return Text(" · ".join(parts), no_wrap=True, overflow="ellipsis")
