"""The open conversation's messages: pick one to edit and resend, flip between its variants, or copy it.

Editing a message, or regenerating the last reply, keeps what it replaces as an
alternative (history.py); a message with alternatives shows "variant i/n", and ←/→
show the others in place: the chat behind the list follows at once, and whatever is
shown when the list closes is the conversation the next message continues.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Dict, List, Optional, Tuple

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Label, OptionList
from textual.widgets.option_list import Option

from opt_tpu_tui.chat import Turn
from opt_tpu_tui.errors import UserError
from opt_tpu_tui.safe_text import terminal_safe
from opt_tpu_tui.tui.compositor import DrawnScreen

TITLE = "Messages · enter edits · ←→ variants · c/m copy reply/message · esc"  # fits 80 columns
Variants = Dict[int, Tuple[int, int]]  # (evaluated at import: no dict[] on 3.8) turn index -> (variant shown, from 1; how many)


def describe(index: int, turn: Turn, variants: Variants) -> Text:
    """One row: the message's number, its first line, and its variants when it has some."""
    first_line = " ".join(turn.user.split())
    shown = variants.get(index)
    text = Text(f"{index + 1:>3}  ", no_wrap=True, overflow="ellipsis")
    if shown:
        text.append(f"‹{shown[0]}/{shown[1]}› ", style="bold")
    text.append(terminal_safe(first_line))
    return text


class MessagesScreen(DrawnScreen, ModalScreen[Optional[int]]):  # evaluated at import: no `|` on 3.8
    """Dismisses with the index of the message to edit, or None.

    ``switch(index, step)`` (the main screen's) shows another variant at ``index`` and
    returns the conversation's turns and variants as they now are; ``copy(text, what)``
    copies as f5 does.
    """

    CSS_PATH = "modal.tcss"
    AUTO_FOCUS = "#messages-list"

    BINDINGS = [
        Binding("escape", "close", "Close", id="messages.close"),
        Binding("left", "switch(-1)", "Previous variant", id="messages.previous"),
        Binding("right", "switch(1)", "Next variant", id="messages.next"),
        Binding("e", "edit", "Edit", show=False, id="messages.edit"),
        Binding("c", "copy('reply')", "Copy reply", id="messages.copy_reply"),
        Binding("m", "copy('message')", "Copy message", id="messages.copy_message"),
    ]

    def __init__(
        self,
        turns: list[Turn],
        variants: Variants,
        switch: Callable[[int, int], Tuple[List[Turn], Variants]],
        copy: Callable[[str, str], None],
    ) -> None:
        super().__init__()
        self.turns, self.variants = list(turns), variants
        self._switch, self._copy = switch, copy

    def compose(self) -> ComposeResult:
        with Vertical(id="messages-body"):
            yield Label(TITLE, id="messages-title", markup=False)
            yield OptionList(*self._options(), id="messages-list")

    def on_mount(self) -> None:
        if self.turns:
            self.query_one(OptionList).highlighted = len(self.turns) - 1  # the latest: the usual one to change

    def _options(self) -> list[Option]:
        if not self.turns:
            return [Option("No messages yet.", id="none", disabled=True)]
        return [Option(describe(i, turn, self.variants)) for i, turn in enumerate(self.turns)]

    def _highlighted(self) -> int | None:
        index = self.query_one(OptionList).highlighted
        return index if self.turns and index is not None else None

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        if self.turns:
            self.dismiss(event.option_index)

    def action_edit(self) -> None:
        index = self._highlighted()
        if index is not None:
            self.dismiss(index)

    def action_switch(self, step: int) -> None:
        index = self._highlighted()
        if index is None:
            return
        if index not in self.variants:
            self.notify("This message has no other variants: editing it, or ctrl+r on the last reply, makes one")
            return
        try:
            self.turns, self.variants = self._switch(index, step)
        except UserError as error:
            self.notify(str(error), severity="error", timeout=8)
            return
        listing = self.query_one(OptionList)
        listing.clear_options()
        listing.add_options(self._options())
        listing.highlighted = min(index, len(self.turns) - 1)

    def action_copy(self, part: str) -> None:
        index = self._highlighted()
        if index is None:
            return
        turn = self.turns[index]
        text = turn.assistant if part == "reply" else turn.user
        if not text:
            self.notify("That message has no reply yet", severity="warning")
            return
        self._copy(text, f"the reply to message {index + 1}" if part == "reply" else f"message {index + 1}")

    def action_close(self) -> None:
        self.dismiss(None)
