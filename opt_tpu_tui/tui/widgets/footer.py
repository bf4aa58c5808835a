"""The key footer: whole entries only, as many as fit, and always the way out (ctrl+q).

Textual's Footer lays its keys out in a row and cuts the row at the screen's edge: at
60 columns the chat's footer ended in "f2 Settin", and ctrl+q, the one key every user
needs, was in none (Textual leaves it out of the footer). Here ctrl+q is one of the
keys, and the keys that would not fit whole are left out instead, from the right, the
quit key kept last. What a key does that the footer has no room for, f1 (named in the
status line) lists.
"""

from __future__ import annotations

from collections.abc import Iterator

from rich.cells import cell_len
from textual.widget import Widget
from textual.widgets import Footer
from textual.widgets._footer import FooterKey

QUIT_ACTIONS = ("quit", "app.quit")


def key_width(key: FooterKey) -> int:
    """Columns a key takes in the compact footer: its key, a space, its description, and a space after it."""
    width = cell_len(key.key_display) + 1
    return width + cell_len(key.description) + 1 if key.description else width


def fitting(keys: list[FooterKey], width: int) -> list[FooterKey]:
    """The keys, in their order, that fit whole in ``width`` columns; quit keys first claim their room."""
    kept = [key for key in keys if key.action in QUIT_ACTIONS]
    room = width - sum(key_width(key) for key in kept)
    for key in keys:
        if key.action not in QUIT_ACTIONS and key_width(key) <= room:
            room -= key_width(key)
            kept.append(key)
        elif key.action not in QUIT_ACTIONS:
            room = -1  # a key that does not fit hides the ones after it too: the order stays the bindings'
    return [key for key in keys if key in kept]


class KeyFooter(Footer):
    """A compact footer that shows only whole keys, ctrl+q among them (see the module's docstring)."""

    def __init__(self) -> None:
        super().__init__(compact=True, show_command_palette=False)

    def compose(self) -> Iterator[Widget]:  # type: ignore[override]
        widgets = list(super().compose())
        keys = [widget for widget in widgets if isinstance(widget, FooterKey)]
        shown = fitting(keys, self.app.size.width)
        return iter([widget for widget in widgets if not isinstance(widget, FooterKey) or widget in shown])

    def on_resize(self) -> None:
        if self.is_attached:
            self.call_after_refresh(self.recompose)
