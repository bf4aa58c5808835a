"""The conversation list: reopen or delete past chats."""

from __future__ import annotations

import time

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
    # The number is what `opt-tpu-tui export ID` takes.
    return Text(f"{summary.id:>4}  {when}  {terminal_safe(summary.title)}  ({turns})", no_wrap=True, overflow="ellipsis")


TITLE = "Conversations · enter opens · d deletes (asks first) · escape closes"


class ConversationsScreen(ModalScreen[int | None]):
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
        self._confirming: int | None = None  # the id a first d asked about: a second d deletes it

    def compose(self) -> ComposeResult:
        with Vertical(id="conversations-body"):
            yield Label(TITLE, id="conversations-title", markup=False)
            yield OptionList(*self._options(), id="conversations-list")

    def _options(self) -> list[Option]:
        if not self.conversations:
            return [Option("No saved conversations yet.", id="none", disabled=True)]
        return [Option(describe(c), id=str(c.id)) for c in self.conversations]

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        if event.option.id and event.option.id != "none":
            self.dismiss(int(event.option.id))

    def on_option_list_option_highlighted(self) -> None:
        """Moving to another conversation keeps the one a first d asked about."""
        self._ask(None)

    def _ask(self, conversation: ConversationSummary | None) -> None:
        self._confirming = conversation.id if conversation else None
        question = f"Delete “{terminal_safe(conversation.title)}”? d again deletes it, ↑/↓ keeps it" if conversation else TITLE
        self.query_one("#conversations-title", Label).update(question)

    def action_delete(self) -> None:
        """A first d asks; a second d on the same conversation deletes it."""
        options = self.query_one(OptionList)
        index = options.highlighted
        if index is None or not self.conversations:
            return
        option = options.get_option_at_index(index)
        if option.id is None or option.id == "none":
            return
        if self._confirming != int(option.id):
            self._ask(next(c for c in self.conversations if c.id == int(option.id)))
            return
        self._ask(None)
        self._delete(int(option.id))  # type: ignore[operator]
        self.conversations = [c for c in self.conversations if c.id != int(option.id)]
        options.clear_options()
        options.add_options(self._options())
        if self.conversations:
            options.highlighted = min(index, len(self.conversations) - 1)
        self.notify("Conversation deleted")

    def action_close(self) -> None:
        self.dismiss(None)
