"""The help screen: every key binding and the few things worth knowing."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Markdown

KEYS: list[tuple[str, str]] = [
    ("enter", "send the message"),
    ("ctrl+j", "new line in the message"),
    ("escape", "stop the reply (the partial reply is kept, marked stopped)"),
    ("ctrl+r", "regenerate the last reply"),
    ("ctrl+n", "new conversation"),
    ("ctrl+o", "conversation list: enter opens, d deletes"),
    ("f2", "settings pane (↑/↓ step a number, enter or ctrl+s applies)"),
    ("f3", "device-stats pane"),
    ("f4", "hide or show the side pane"),
    ("ctrl+t", "next theme (dark, light, high-contrast, …)"),
    ("tab / shift+tab", "move between the prompt, transcript and panes"),
    ("ctrl+p", "command palette: every action, and 'Change theme'"),
    ("f1", "this help"),
    ("ctrl+q", "quit (a reply in progress is stopped and saved)"),
]


def help_markdown() -> str:
    table = "\n".join(f"| `{key}` | {what} |" for key, what in KEYS)
    return f"""\
# opt-tpu-tui

Chat with an OPT model. OPT is a base model, not an instruction-tuned one: it
continues a transcript that starts with the preamble (settings pane).

| key | action |
| --- | --- |
{table}

Settings apply from the next reply. Below 100 columns the side pane takes the
whole screen while open: f2/f3/f4 or escape bring the chat back.

Press escape or f1 to close this help.
"""


class HelpScreen(ModalScreen[None]):
    CSS_PATH = "modal.tcss"
    BINDINGS = [Binding("escape,f1,q", "dismiss", "Close", id="help.close")]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-body"):
            yield Markdown(help_markdown())

    def action_dismiss(self) -> None:  # type: ignore[override]
        self.dismiss(None)
