"""The conversation list: reopen, rename or delete past chats."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Optional

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label, OptionList
from textual.widgets.option_list import Option

from opt_tpu_tui.errors import UserError
from opt_tpu_tui.history import ConversationSummary
from opt_tpu_tui.safe_text import terminal_safe
from opt_tpu_tui.tui.compositor import DrawnScreen


MODEL_WIDTH = 16  # columns at most for the model's name: the title keeps the rest


def model_column(summary: ConversationSummary, width: int) -> str:
    """The model that wrote the latest reply, cut to ``width`` columns; "unknown model" when an older version
    saved it (nothing at all when no conversation in the list knows its model: ``width`` 0)."""
    if not width:
        return ""
    name = terminal_safe(" ".join(summary.model.split())) or "unknown model"
    name = name if len(name) <= width else name[: width - 1] + "…"
    return f"{name:<{width}}  "


def describe(summary: ConversationSummary, model_width: int = 0) -> Text:
    """One line of the list; the title is a user's message, so shown as plain, safe text."""
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(summary.updated))
    turns = f"{summary.turns} turn{'s' if summary.turns != 1 else ''}"
    model = model_column(summary, model_width)
    # The number is what `opt-tpu-tui export ID` takes; the title goes last, where a long one is cut.
    return Text(
        f"{summary.id:>4}  {when}  {turns:<9}  {model}{terminal_safe(summary.title)}", no_wrap=True, overflow="ellipsis"
    )


def model_width(conversations: list[ConversationSummary]) -> int:
    """The model column's width: the longest name (or "unknown model") up to MODEL_WIDTH; 0 if no model is known."""
    if not any(c.model for c in conversations):
        return 0
    return min(MODEL_WIDTH, max(len(" ".join(c.model.split())) or len("unknown model") for c in conversations))


TITLE = "Conversations · enter opens · r renames · d deletes (asks first) · escape closes"


class ConversationsScreen(DrawnScreen, ModalScreen[Optional[int]]):  # evaluated at import: no `|` on 3.8
    """Dismisses with the id of the conversation to open, or None."""

    CSS_PATH = "modal.tcss"

    BINDINGS = [
        Binding("escape", "close", "Close", id="conversations.close"),
        Binding("d,delete", "delete", "Delete", id="conversations.delete"),
        Binding("r", "rename", "Rename", id="conversations.rename"),
    ]

    def __init__(
        self, conversations: list[ConversationSummary], delete: Callable[[int], None], rename: Callable[[int, str], str],
        problem: str | None = None,
    ) -> None:  # fmt: skip
        super().__init__()
        self.conversations = conversations
        self._problem = problem  # why there is no history to list, shown in its place
        self._delete = delete  # both supplied by the main screen
        self._rename = rename  # (id, title) -> the title as saved
        self._renaming: int | None = None
        self._confirming: int | None = None  # the id a first d asked about: a second d deletes it

    def compose(self) -> ComposeResult:
        with Vertical(id="conversations-body"):
            yield Label(TITLE, id="conversations-title", markup=False)
            yield OptionList(*self._options(), id="conversations-list")
            yield Input(id="conversations-rename", placeholder="new title · enter renames · escape keeps it")

    def on_mount(self) -> None:
        if self._problem:
            self.notify(self._problem, title="No history", severity="warning", timeout=10)  # the whole line

    def _options(self) -> list[Option]:
        if self._problem:
            return [Option(Text(self._problem, no_wrap=True, overflow="ellipsis"), id="none", disabled=True)]
        if not self.conversations:
            return [Option("No saved conversations yet.", id="none", disabled=True)]
        width = model_width(self.conversations)
        return [Option(describe(c, width), id=str(c.id)) for c in self.conversations]

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
        conversation = self._highlighted()
        if conversation is None:
            return
        if self._confirming != conversation.id:
            self._ask(conversation)
            return
        self._ask(None)
        try:
            self._delete(conversation.id)
        except UserError as error:  # the history is unavailable, or found damaged: nothing was deleted
            self.notify(str(error), title="Not deleted", severity="error", timeout=10)
            return
        self._refill([c for c in self.conversations if c.id != conversation.id])
        self.notify("Conversation deleted")

    def _refill(self, conversations: list[ConversationSummary]) -> None:
        """Show ``conversations``, the highlight staying where it was (or on the last one)."""
        options = self.query_one(OptionList)
        index = options.highlighted
        self.conversations = conversations
        options.clear_options()
        options.add_options(self._options())
        if conversations and index is not None:
            options.highlighted = min(index, len(conversations) - 1)

    def _highlighted(self) -> ConversationSummary | None:
        options = self.query_one(OptionList)
        if options.highlighted is None or not self.conversations:
            return None
        return self.conversations[options.highlighted]

    def action_rename(self) -> None:
        conversation = self._highlighted()
        if conversation is None:
            return
        self._renaming = conversation.id
        box = self.query_one("#conversations-rename", Input)
        box.value, box.display = conversation.title, True
        box.focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        try:
            title = self._rename(self._renaming, event.value)  # type: ignore[arg-type]
        except UserError as refusal:
            self.notify(str(refusal), severity="warning")
            return
        self._refill([replace(c, title=title) if c.id == self._renaming else c for c in self.conversations])
        self._end_rename()

    def _end_rename(self) -> None:
        self._renaming = None
        self.query_one("#conversations-rename", Input).display = False
        self.query_one(OptionList).focus()

    def action_close(self) -> None:
        if self._renaming is not None:  # escape while renaming keeps the title
            self._end_rename()
            return
        self.dismiss(None)
