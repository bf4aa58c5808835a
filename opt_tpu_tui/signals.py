"""SIGHUP and SIGTERM end a session the way the user's own quit does, not in the middle of a step.

A closed terminal, an SSH disconnect or ``tmux kill-session`` send SIGHUP; ``kill`` sends
SIGTERM. Python's default is to die at once: a reply in flight lost the words last shown
(it is saved twice a second as it streams), its turn stayed incomplete, the history's open
marker stayed behind (so the next start ran the full integrity check), and the terminal
was left in the UI's modes (alternate screen, mouse reporting, hidden cursor, raw input).

So both are handled as ctrl+q in the UI and as ctrl+d in ``-c``: the reply stops between
two tokens and is saved as stopped, the history is closed, the terminal restored. The
exit code is then 128 + the signal's number (129 for SIGHUP, 143 for SIGTERM): the
shell's convention for a process a signal ended, which a script can tell from the
user's own quit (0). No Textual here: ``-c`` uses it as well as the UI (tui/app.py).
"""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Optional

from opt_tpu_tui.native_output import to_devnull

# SIGHUP does not exist on Windows, where neither has a meaning here
ENDING_SIGNALS = tuple(getattr(signal, name) for name in ("SIGHUP", "SIGTERM") if hasattr(signal, name))


def exit_code(signum: int) -> int:
    """The exit code after ending on signal ``signum``: 128 + its number, as a shell reports a process it ended."""
    return 128 + signum


def handle_in_loop(loop: asyncio.AbstractEventLoop, end: Callable[[int], None]) -> None:
    """Call ``end(signum)`` in ``loop`` on SIGHUP or SIGTERM.

    asyncio's own handler wakes the loop through its self-pipe; a plain signal.signal
    handler would run at once but whatever it scheduled would wait until the loop next
    woke, which for an idle app can be a long time. A signal the app was started
    with ignored (``nohup``, ``trap '' HUP``) stays ignored, as the user asked.
    """
    for signum in ENDING_SIGNALS:
        if signal.getsignal(signum) is not signal.SIG_IGN:
            loop.add_signal_handler(signum, end, signum)


def stop_handling_in_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Undo ``handle_in_loop`` (the signals get their default action back)."""
    for signum in ENDING_SIGNALS:
        loop.remove_signal_handler(signum)


class Ended(BaseException):
    """Raised in the main thread by ``ending_stops``'s handler where there is no reply to stop (``-c`` at its prompt).

    A BaseException, as KeyboardInterrupt is: code that turns an ``Exception`` into a
    failed reply (persist.run_and_save) must let it through, so a second signal leaves."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"ended by signal {signum}")
        self.signum = signum


class Ending:
    """Which ending signal came (None: none yet), and the reply to stop when one comes.

    Set from a signal handler: the reply's cancel event stops the generation before its
    next token, as ctrl+c does in ``-c``, so the turn and the backend's cache stay
    consistent and whatever saves the reply saves it as stopped. With no reply running
    (reading the next message), the handler raises ``Ended`` to leave at once. A second
    signal during a reply raises too, for a step that does not return (a long prefill).
    """

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self.cancel: Optional[threading.Event] = None  # the running reply's

    def __call__(self, signum: int, frame: Optional[FrameType]) -> None:
        first = self.signum is None
        self.signum = signum
        if signum == getattr(signal, "SIGHUP", None):
            drop_terminal_output()
        if self.cancel is None or not first:
            raise Ended(signum)
        self.cancel.set()

    @contextmanager
    def stopping(self, cancel: threading.Event) -> Iterator[None]:
        """For the block (a reply streaming), an ending signal sets ``cancel`` instead of raising."""
        self.cancel = cancel
        if self.signum is not None:  # came in the instant before: stop at once
            cancel.set()
        try:
            yield
        finally:
            self.cancel = None


@contextmanager
def ending_stops() -> Iterator[Ending]:
    """For the block, SIGHUP and SIGTERM go to an ``Ending`` (see it); the previous handlers come back after."""
    ending = Ending()
    wanted = [signum for signum in ENDING_SIGNALS if signal.getsignal(signum) is not signal.SIG_IGN]  # nohup: ignored
    previous = {signum: signal.signal(signum, ending) for signum in wanted}
    try:
        yield ending
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def drop_terminal_output() -> None:
    """After a hangup, what is still written to stdout or stderr goes to /dev/null instead of failing.

    The terminal is gone (EIO on every write): the reply's last words, a stats line or an
    error message would otherwise end the run with a second error instead of letting it
    save and close. Descriptors that are not a character device (a pipe, a file) keep
    theirs; a hung-up terminal is one, though ``isatty`` says no to it any more.
    """
    for descriptor in (1, 2):
        try:
            terminal = stat.S_ISCHR(os.fstat(descriptor).st_mode)
        except OSError:
            continue
        if terminal:
            to_devnull(descriptor)
