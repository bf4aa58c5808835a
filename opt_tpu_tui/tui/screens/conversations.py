"""The conversation list: reopen or delete past chats."""

from __future__ import annotations

import time
from typing import Optional

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Label, OptionList
from textual.widgets.option_list import Option

from opt_tpu_tui.history import ConversationSummary
from opt_tpu_tui.safe_text import terminal_safe


def describe(summary: ConversationSummary) -> Text:
    """One line of the list; the title is a user's message, so shown as plain, safe text."""
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(summary.updated))
    turns = f"{summary.turns} turn{'s' if summary.turns != 1 else ''}"
    return Text(f"{when}  {terminal_safe(summary.title)}  ({turns})", no_wrap=True, overflow="ellipsis")


class ConversationsScreen(ModalScreen[Optional[int]]):  # evaluated at import: no `|` on 3.8
    """Dismisses with the id of the conversation to open, or None."""

    CSS_PATH = "modal.tcss"

    BINDINGS = [
        Binding("escape", "close", "Close", id="conversations.close"),
        Binding("d,delete", "delete", "Delete", id="conversations.delete"),
    ]

    def __init__(self, conversations: list[ConversationSummary], delete: object) -> None:
        super().__init__()
        self.conversations = conversations
        self._delete = delete  # callable(id) -> None, supplied by the main screen

    def compose(self) -> ComposeResult:
        with Vertical(id="conversations-body"):
            yield Label("Conversations · enter opens · d deletes · escape closes", id="conversations-title")
            yield OptionList(*self._options(), id="conversations-list")

    def _options(self) -> list[Option]:
        if not self.conversations:
            return [Option("No saved conversations yet.", id="none", disabled=True)]
        return [Option(describe(c), id=str(c.id)) for c in self.conversations]

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        if event.option.id and event.option.id != "none":
            self.dismiss(int(event.option.id))

    def action_delete(self) -> None:
        options = self.query_one(OptionList)
        index = options.highlighted
        if index is None or not self.conversations:
            return
        option = options.get_option_at_index(index)
        if option.id is None or option.id == "none":
            return
        self._delete(int(option.id))  # type: ignore[operator]
        self.conversations = [c for c in self.conversations if c.id != int(option.id)]
        options.clear_options()
        options.add_options(self._options())
        if self.conversations:
            options.highlighted = min(index, len(self.conversations) - 1)
        self.notify("Conversation deleted")

    def action_close(self) -> None:
        self.dismiss(None)
