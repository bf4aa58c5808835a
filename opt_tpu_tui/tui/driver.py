"""The terminal's real size, asked of the terminal the app draws on.

Textual's Linux driver takes the size from ``shutil.get_terminal_size()``, which asks
file descriptor 1. While the app runs, descriptor 1 points at the native-output log
(native_output.py: what the TPU runtime prints must not land on the screen), so that
query fails and every terminal would be drawn as 80x24, resizes ignored. The driver
writes to stderr and reads stdin, so those are the descriptors that are the terminal.
"""

from __future__ import annotations

import os
import sys

from textual.driver import Driver


def terminal_size(descriptors: tuple[int, ...]) -> tuple[int, int] | None:
    """The size of the first of ``descriptors`` that is a terminal, as (columns, lines)."""
    for fd in descriptors:
        try:
            size = os.get_terminal_size(fd)
        except (OSError, ValueError):
            continue
        if size.columns > 0 and size.lines > 0:
            return size.columns, size.lines
    return None


def driver_for(default: type[Driver]) -> type[Driver]:
    """Textual's Linux driver with the size asked of stderr and stdin; any other driver as it is."""
    if sys.platform == "win32":
        return default
    from textual.drivers.linux_driver import LinuxDriver

    if default is not LinuxDriver:
        return default

    class TerminalDriver(LinuxDriver):
        def _get_terminal_size(self) -> tuple[int, int]:
            streams = (sys.__stderr__, sys.__stdin__)
            descriptors = tuple(stream.fileno() for stream in streams if stream is not None)
            return terminal_size(descriptors) or super()._get_terminal_size()

    return TerminalDriver
