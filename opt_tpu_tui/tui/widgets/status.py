"""The one-line status at the top of the chat: model, context meter, a marker for a conversation with its own
settings, last reply's speed, state, the help key.

Fed by reactives: setting a value to what it already is repaints nothing, so the line
costs bytes only when something on it changes. The context meter, state and help key
keep their place at any width from 60 columns; the last reply's figures give way where
they would leave the model's name under NAME_ROOM cells; then the name is shortened, the
backend first, and the demo marker stays (as "DEMO").
"""

from __future__ import annotations

from rich.cells import cell_len
from rich.style import Style
from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from opt_tpu_tui.safe_text import terminal_safe

SEPARATOR = " · "
CUSTOM = "custom"  # short, so the last reply's tok/s still fits at 80 columns beside it
NAME_ROOM = 12  # cells of the model's name kept before the speed figures give way
DEMO_SHORT = " · DEMO"  # the demo marker where "DEMO model" does not fit


class StatusLine(Widget):
    model = reactive("")
    backend = reactive("")
    demo = reactive(False)
    context_used = reactive(0)  # tokens the model sees (ChatSession.context_use: live while a reply streams)
    context_size = reactive(0)  # 0 while no model is loaded
    drops_next = reactive(False)  # the next turn will leave the oldest turns out of the prompt
    first_token = reactive(0.0)  # seconds to the last reply's first token; 0: none to show (or one streaming)
    speed = reactive(0.0)  # the last reply's decode tokens per second
    state = reactive("loading model…")
    custom = reactive(False)  # the open conversation has settings of its own

    def render(self) -> Text:
        meter = Text()
        if self.context_size:
            meter = Text(f"context {self.context_used}/{self.context_size}")
            if self.drops_next:
                meter.append(" full")  # the next turn leaves the oldest turns out
                meter.stylize(Style(color=self.app.get_css_variables()["warning"], bold=True))
        speed = [Text(f"first {self.first_token:.2f} s"), Text(f"{self.speed:.1f} tok/s")] if self.first_token else []
        names = self._names()
        wanted = min(cell_len(names[-1]), NAME_ROOM + (cell_len(DEMO_SHORT) if self.demo else 0))
        width = self.content_size.width
        custom = Text(CUSTOM) if self.custom else Text()
        while True:  # too narrow: the last reply's figures go before the model's name is cut below NAME_ROOM
            parts = (meter, custom, *speed, Text(self.state), Text("f1 help"))
            right = Text(SEPARATOR).join([part for part in parts if part])
            room = width - right.cell_len - cell_len(SEPARATOR)
            if room >= wanted or not speed:
                break
            speed.pop(0)
        if room < 4:
            return right
        name = next((name for name in names if cell_len(name) <= room), None)
        if name is None:  # the shortest form, its model's name cut: what it is a demo of may go, DEMO may not
            demo = DEMO_SHORT if self.demo and room >= cell_len(DEMO_SHORT) + 4 else ""
            name = terminal_safe(self.model)[: room - 1 - len(demo)] + "…" + demo
        return Text.assemble(name, SEPARATOR, right, no_wrap=True, overflow="ellipsis")

    def _names(self) -> list[str]:
        """The model's label, longest form first: the backend and the words of the demo marker give way
        before the model's name is cut (at 100 columns with the pane beside, "DEMO model" read "D…")."""
        model = terminal_safe(self.model)
        names = [f"{model} on {terminal_safe(self.backend)}", model]
        if self.demo:
            names = [names[0] + " · DEMO model", names[0] + DEMO_SHORT, model + DEMO_SHORT]
        return names
