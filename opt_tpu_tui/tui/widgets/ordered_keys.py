"""Keys handled in the order they were typed, however fast they arrive.

Over SSH, type-ahead and unbracketed pastes reach the app as one burst of key events.
Textual forwards each to the focused widget's queue, but the widget's bindings
(backspace, cursor keys, our enter-to-send) are only looked up once the key has
bubbled back up to the app, by which time the widget has already inserted the
printable keys queued after it: ``ab`` backspace ``c`` came out as ``a`` then ``c``
deleted. A priority binding is worse: it runs before the keys typed ahead of it
reach the widget at all, so enter sent a prefix of the message.

``OrderedKeys`` runs the focused widget's own bindings from its own key handler, in
the same queue as the printable keys, so every key takes effect in order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from textual import events

if TYPE_CHECKING:
    from textual.widget import Widget as _Widget
else:
    _Widget = object  # a plain mixin: a Widget subclass would reset the widget's class settings (can_focus, CSS)


class OrderedKeys(_Widget):
    """Mix in before a Textual input widget: its own bindings run in key order."""

    async def _on_key(self, event: events.Key) -> None:
        active = self.screen.active_bindings.get(event.key)
        if active is not None and active.node is self and active.enabled:
            event.stop()
            event.prevent_default()
            await self.run_action(active.binding.action)
        # Otherwise Textual goes on to the widget's own key handler (it calls each class's in turn).
