"""Textual's Linux driver, with the terminal's real size and escape kept as a key of its own.

Size: Textual's Linux driver takes it from ``shutil.get_terminal_size()``, which asks
file descriptor 1. While the app runs, descriptor 1 points at the native-output log
(native_output.py: what the TPU runtime prints must not land on the screen), so that
query fails and every terminal would be drawn as 80x24, resizes ignored. The driver
writes to stderr and reads stdin, so those are the descriptors that are the terminal.

Escape: over SSH, keys typed apart arrive together, and Textual 8 reads an escape that
comes in one read with the next key as that key with alt held (``alt+a``), or drops it
before a control key (escape ctrl+f came out as ctrl+f): escape then ``hello`` in the
conversation list left the list open and the text nowhere. The app binds no alt+ key, so
an escape followed at once by a key is read as the two keys it most likely was, as
Textual 6 (the box's Python 3.8) reads it. Escape sequences (arrows, F-keys, pastes)
are unaffected: they are known sequences, never an escape before a lone key.

A terminal that hung up (closed, an SSH disconnect, ``tmux kill-session``) reads as end
of file, forever, and fails every write with EIO. Textual's input loop went round at
full speed on the empty reads and the app never noticed (with SIGHUP ignored, as under
``nohup``, it ran on, a core busy); its writer thread would die on the first failed write
and then block the app on its full queue. So here the end of input, or a failed read,
quits the app as the hangup's SIGHUP does (signals.py), and output to a lost terminal is
dropped: the reply is saved and the history closed either way.
"""

from __future__ import annotations

import os
import selectors
import signal
import sys
from codecs import getincrementaldecoder
from collections.abc import Iterable
from typing import TextIO

from textual import events
from textual.driver import Driver

from opt_tpu_tui.tui.textual_patches import ParseError, XTermParser  # Textual internals: one place

from opt_tpu_tui.native_output import terminal_size, to_devnull
from opt_tpu_tui.signals import exit_code


class EscapeKeepingParser(XTermParser):
    """Textual's parser, with an escape before a lone key kept as a key of its own (see the module's docstring)."""

    def _sequence_to_key_events(self, sequence: str, alt: bool = False) -> Iterable[events.Key]:
        if alt:  # Textual 8 only: the escape it took for alt
            yield events.Key("escape", "\x1b")
        yield from super()._sequence_to_key_events(sequence)


class TerminalOutput:
    """The stream Textual writes the screen to, with writes to a lost terminal dropped (see the module's docstring).

    After the first failed write the descriptor is pointed at /dev/null, so what is still
    buffered or written (Textual's restoring sequences, Python's flush at exit) goes
    nowhere quietly instead of failing again.
    """

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> None:
        try:
            self.stream.write(text)
        except OSError:
            self.lost()

    def flush(self) -> None:
        try:
            self.stream.flush()
        except OSError:
            self.lost()

    def fileno(self) -> int:
        return self.stream.fileno()

    def lost(self) -> None:
        to_devnull(self.stream)
        try:
            self.stream.flush()  # what the failed write left in the buffer, now to /dev/null
        except (OSError, ValueError):
            pass


def driver_for(default: type[Driver]) -> type[Driver]:
    """Textual's Linux driver with the size asked of stderr and stdin; any other driver as it is."""
    if sys.platform == "win32":
        return default
    from textual.drivers.linux_driver import LinuxDriver

    if default is not LinuxDriver:
        return default

    class TerminalDriver(LinuxDriver):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]
            self._file = TerminalOutput(self._file)  # type: ignore[assignment]

        def _run_input_thread(self) -> None:
            try:
                self.run_input_thread()
            except (EOFError, OSError):  # the terminal is gone: quit as on its SIGHUP, not in a panic
                self._app.call_later(self._app.exit, return_code=exit_code(signal.SIGHUP))
            except BaseException:  # as Textual's own: anything else is a bug, shown as one
                import rich.traceback

                self._app.call_later(self._app.panic, rich.traceback.Traceback())

        def run_input_thread(self) -> None:
            """Textual's input loop (the same in Textual 6.2 and 8), but the end of input raises EOFError."""
            selector = selectors.SelectSelector()
            selector.register(self.fileno, selectors.EVENT_READ)
            parser = EscapeKeepingParser(self._debug)
            decode = getincrementaldecoder("utf-8")().decode
            try:
                while not self.exit_event.is_set():
                    if selector.select(0.1):
                        data = os.read(self.fileno, 4096)
                        if not data:
                            raise EOFError("the terminal is gone")
                        for event in parser.feed(decode(data)):
                            self.process_message(event)
                    for event in parser.tick():
                        self.process_message(event)
            finally:
                selector.close()
                try:
                    for _ in parser.feed(""):
                        pass
                except (EOFError, ParseError):
                    pass

        def _get_terminal_size(self) -> tuple[int, int]:
            streams = (sys.__stderr__, sys.__stdin__)
            descriptors = tuple(stream.fileno() for stream in streams if stream is not None)
            return terminal_size(descriptors) or super()._get_terminal_size()

    return TerminalDriver
