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

Between widgets the same holds only if a key that moves the focus or opens a screen has
done so before the next key is handed out. Textual hands each key to whatever has the
focus when the app reads it from its queue, and the app reads a whole burst before the
first key's binding has run (it runs once the key has bubbled back up), before a pushed
screen is mounted and focused, and before a ``focus()`` (a later callback) takes hold:
``ctrl+g`` up enter sent the prompt's draft while the messages list opened. So
``KeysInTurn`` holds each key (and paste) until the app has settled from the one before:
the app and every widget waiting for its next message (none queued, none being handled),
so the key's handlers, bindings and what they set off (a screen's mounting, a focus
change, a list's highlight message) are all done. Textual keeps no count of that, so
it is read from its queue's internals (``_queue.Queue``, the same in Textual 6 and 8);
a key waits SETTLE_LIMIT at most, so a stuck widget delays keys but cannot eat them. Then the key
goes where the focus now is, as Textual would have sent it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, Any, Union

from textual import events

from opt_tpu_tui.tui.textual_patches import busy_pump  # Textual internals: one place

if TYPE_CHECKING:
    from textual.app import App as _App
    from textual.message_pump import MessagePump
    from textual.widget import Widget as _Widget
else:
    _Widget = object  # a plain mixin: a Widget subclass would reset the widget's class settings (can_focus, CSS)
    _App = object

SETTLE_LIMIT = 2.0  # seconds: a key waits no longer than this for the app to settle (a stuck queue must not eat keys)
UserInput = Union[events.Key, events.Paste]  # evaluated at runtime: no `|` on 3.8


class OrderedKeys(_Widget):
    """Mix in before a Textual input widget: its own bindings run in key order."""

    async def _on_key(self, event: events.Key) -> None:
        active = self.screen.active_bindings.get(event.key)
        if active is not None and active.node is self and active.enabled:
            event.stop()
            event.prevent_default()
            await self.run_action(active.binding.action)
        # Otherwise Textual goes on to the widget's own key handler (it calls each class's in turn).


class KeysInTurn(_App):
    """Mix in before Textual's App: each key or paste is handed out once the app has settled from the one before."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._held_input: deque[UserInput] = deque()
        self._releasing: asyncio.Task[None] | None = None

    async def on_event(self, event: events.Event) -> None:
        if isinstance(event, (events.Key, events.Paste)) and not event.is_forwarded:
            self._held_input.append(event)
            if self._releasing is None:
                self._releasing = asyncio.create_task(self._release_input())
            return
        await super().on_event(event)

    async def _release_input(self) -> None:
        """Hand out the held input one event at a time, each once the app is settled (in the app's own queue)."""
        try:
            while self._held_input:
                await self._settled()
                self.call_later(self._hand_out, self._held_input.popleft())  # the app's queue: settled waits for it
        finally:
            self._releasing = None

    async def _hand_out(self, event: UserInput) -> None:
        await super().on_event(event)  # Textual's own dispatch: priority bindings, then the focused widget

    async def _settled(self) -> None:
        """Return once every message pump in the app waits for a message, SETTLE_LIMIT at the most."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SETTLE_LIMIT
        polls = 0
        while self._busy_pump() is not None and loop.time() < deadline:
            await asyncio.sleep(0 if polls < 20 else 0.002)  # most steps take a few turns of the loop
            polls += 1

    def _busy_pump(self) -> MessagePump | None:
        """The app or a widget (on any screen) with a message queued or being handled, if any."""
        return busy_pump(self)  # type: ignore[arg-type]
