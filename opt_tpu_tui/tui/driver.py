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
"""

from __future__ import annotations

import sys
from collections.abc import Iterable

from textual import events
from textual._xterm_parser import XTermParser
from textual.driver import Driver

from opt_tpu_tui.native_output import terminal_size


class EscapeKeepingParser(XTermParser):
    """Textual's parser, with an escape before a lone key kept as a key of its own (see the module's docstring)."""

    def _sequence_to_key_events(self, sequence: str, alt: bool = False) -> Iterable[events.Key]:
        if alt:  # Textual 8 only: the escape it took for alt
            yield events.Key("escape", "\x1b")
        yield from super()._sequence_to_key_events(sequence)


def driver_for(default: type[Driver]) -> type[Driver]:
    """Textual's Linux driver with the size asked of stderr and stdin; any other driver as it is."""
    if sys.platform == "win32":
        return default
    from textual.drivers.linux_driver import LinuxDriver

    if default is not LinuxDriver:
        return default

    from textual.drivers import linux_driver

    # The driver's input thread makes its parser by this module-level name: the app's only
    # driver, so the one terminal input this process reads.
    linux_driver.XTermParser = EscapeKeepingParser  # type: ignore[misc]

    class TerminalDriver(LinuxDriver):
        def _get_terminal_size(self) -> tuple[int, int]:
            streams = (sys.__stderr__, sys.__stdin__)
            descriptors = tuple(stream.fileno() for stream in streams if stream is not None)
            return terminal_size(descriptors) or super()._get_terminal_size()

    return TerminalDriver
