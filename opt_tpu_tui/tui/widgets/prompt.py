"""The multi-line prompt box: Enter sends, ctrl+j inserts a newline.

Many terminals send the same byte for Enter and Shift+Enter, so the newline key is
ctrl+j (a line feed, which every terminal can type). Both are the box's own bindings,
run in key order (ordered_keys.py), so a burst such as ``hello`` Enter sends exactly
``hello``. Sending empties the box in the same step, so keys typed right after Enter
start the next message instead of being lost to a later clear. While a message cannot be
sent (a reply streams), Enter breaks the line instead, so lines pasted then stay apart.

ctrl+z is the app's suspend key (app.py), so undo here is ctrl+_ (ctrl+y redoes); ctrl+c
is the chat screen's: it copies selected text, else stops a reply (screens/main.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from textual.binding import Binding
from textual.message import Message
from textual.widgets import TextArea

from opt_tpu_tui.tui.widgets.ordered_keys import OrderedKeys

REFUSAL_QUIET = 5.0  # seconds: a refusal is told once in this long, however many enters it meets


class PromptInput(OrderedKeys, TextArea):
    BINDINGS = [
        Binding("enter", "submit", "Send", id="prompt.send", tooltip="send the message"),
        Binding("ctrl+j", "newline", "Line", id="prompt.newline", tooltip="new line in the message"),
        # Textual 6's TextArea (the one Python 3.8 gets) takes ctrl+f to delete a word: the chat's search wins.
        Binding("ctrl+f", "screen.search", show=False),
        # TextArea's own ctrl+u stops at the start of the wrapped row: a long paste took a press per row.
        Binding("ctrl+u", "delete_line_start", show=False, id="prompt.kill_line",
                tooltip="delete the message's line up to the cursor, however many rows it wraps to"),
        # ctrl+z suspends the app (app.py); undo moves to ctrl+_ (readline's and Emacs's undo; ctrl+/ on many terminals)
        Binding("ctrl+underscore", "undo", "Undo", id="prompt.undo", show=False, key_display="ctrl+_",
                tooltip="undo in the message (ctrl+y redoes)"),
    ]

    @dataclass
    class Submitted(Message):
        text: str

    def __init__(self, **kwargs: object) -> None:
        super().__init__(
            placeholder="Message · enter sends · ctrl+j new line",
            soft_wrap=True, show_line_numbers=False, tab_behavior="focus", compact=True, **kwargs)  # type: ignore[arg-type]
        self.cursor_blink = False  # a blinking cursor sends bytes twice a second over SSH for nothing
        self.refusal: str | None = None  # why a message cannot be sent now (a reply is streaming, ...)
        self._told: tuple[str | None, float] = (None, 0.0)  # the refusal last told, and when
        self.editing: int | None = None  # the index of the message being edited here (enter resends it)
        self._draft = ""  # what the box held before the edit began: escape brings it back

    def action_submit(self) -> None:
        if not self.text.strip():
            return
        if self.refusal:
            # Not sent now, but the line break stays: lines typed, or pasted without brackets, while a
            # reply streams are kept apart instead of run together. Told once, not once a line.
            self.insert("\n")
            told, at = self._told
            if self.refusal != told or time.monotonic() - at > REFUSAL_QUIET:
                self._told = (self.refusal, time.monotonic())
                self.notify(self.refusal, severity="warning")
            return
        text = self.text.rstrip("\n")  # the breaks of refused enters at its end
        self.clear()
        self.post_message(self.Submitted(text))

    def action_newline(self) -> None:
        self.insert("\n")

    def action_delete_line_start(self) -> None:
        """Delete from the cursor to the start of its line, as readline's ctrl+u does: the whole logical
        line, however many rows it wraps to (one press clears a long paste). At the start of a line,
        the line break before it goes, so pressing again keeps clearing a message of several lines."""
        if self.read_only:
            return
        row, column = self.selection.end
        if column == 0:
            if row == 0:
                return
            start = (row - 1, len(self.document[row - 1]))
        else:
            start = (row, 0)
        self.delete(start, (row, column), maintain_selection_offset=False)

    def give_back(self, text: str) -> None:
        """A message that could not be sent returns to the box, before anything typed since; the cursor
        stays where it was in that (at the end of the message when nothing was typed), so typing goes on."""
        typed, (row, column) = self.text, self.cursor_location
        self.text = text + typed
        lines = text.split("\n")
        self.cursor_location = (row + len(lines) - 1, column + len(lines[-1]) if row == 0 else column)

    def start_editing(self, index: int, text: str) -> None:
        """Hold message ``index``'s ``text`` for editing; enter resends it, cancel_editing brings back the draft."""
        self.editing, self._draft = index, self.text
        self.text = text
        self.move_cursor(self.document.end)
        self.border_title = f"editing message {index + 1} · enter resends · esc cancels"
        self.add_class("-editing")

    def cancel_editing(self) -> None:
        """Leave an edit unsent: the box gets back what it held before."""
        if self.editing is not None:
            self.text = self._draft
            self.end_editing()

    def end_editing(self) -> None:
        self.editing = None
        self.border_title = None
        self.remove_class("-editing")
