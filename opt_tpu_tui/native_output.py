"""Keeping what C libraries print to stdout out of the app's own output.

The TPU runtime's libraries print to file descriptor 1: bmrt when it loads a model, the
simulator on every launch. In the UI that text would land in the middle of the screen,
and with ``-p`` in the middle of the reply (``opt-tpu-tui -p … > reply.txt``). So while
descriptor 1 points elsewhere, the terminal's size is asked of the others (terminal_size).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from opt_tpu_tui.errors import UserError
from opt_tpu_tui.paths import PRIVATE_FILE, private_dir, tighten


@contextmanager
def native_stdout_to(path: Path, append: bool = False) -> Iterator[None]:
    """Point file descriptor 1 at ``path`` (emptied first unless ``append``) for the block, then back.

    Python's ``sys.stdout``, if it wrote to descriptor 1, keeps writing where that went
    (the terminal, a pipe). Where ``path`` cannot be written, nothing changes.
    """
    log = _open_log(path, append)
    if log is None:
        yield
        return
    python_stdout = sys.stdout
    if python_stdout is not None:  # None: the app was started with stdout closed
        python_stdout.flush()
    saved = os.dup(1)
    os.dup2(log, 1)
    os.close(log)
    stand_in = None
    if _descriptor(python_stdout) == 1:
        stand_in = open(saved, "w", encoding=python_stdout.encoding, errors=python_stdout.errors, closefd=False)
        sys.stdout = stand_in
    try:
        yield
    finally:
        if stand_in is not None:
            stand_in.close()  # flushes; the descriptor stays open (closefd=False)
            sys.stdout = python_stdout
        os.dup2(saved, 1)
        os.close(saved)


def _open_log(path: Path, append: bool) -> int | None:
    """A descriptor writing to ``path``, private (0600 in a 0700 folder); None where it cannot be written."""
    try:
        private_dir(path.parent)
        log = os.open(path, os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC), PRIVATE_FILE)
    except (OSError, UserError):
        return None
    tighten(path, PRIVATE_FILE)
    return log


def _descriptor(stream: object) -> int | None:
    try:
        return stream.fileno()  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):
        return None


def to_devnull(target: object) -> None:
    """Point ``target``'s descriptor (a stream's, or a descriptor number) at /dev/null, quietly.

    For output that has nowhere to go any more (a hung-up terminal, a full disk, a closed
    pipe): what is still written, and the flush at exit, then succeed instead of failing
    a second time with a second message.
    """
    descriptor = target if isinstance(target, int) else _descriptor(target)
    if descriptor is None:
        return
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
    except OSError:
        return
    try:
        os.dup2(devnull, descriptor)
    except OSError:
        pass
    finally:
        os.close(devnull)


def park_native_stdout(path: Path) -> None:
    """Point descriptor 1 at ``path`` (appended) for the rest of the process; ``sys.stdout`` moves to a copy of it.

    Called once the app's own output is written and flushed: the TPU runtime and the
    simulator print their goodbyes (``BMLIB Send Quit Message``) from C exit handlers
    that run after Python's ``atexit``, so no ``with`` block can still be open then.
    Chosen over ``os._exit`` after flushing, which would skip those same exit handlers
    (the runtime's own clean-up), Python's ``atexit`` and buffered files other code may
    hold: parking the descriptor changes where the goodbyes go and nothing else.
    """
    log = _open_log(path, append=True)
    if log is None:
        return
    python_stdout = sys.stdout
    if python_stdout is not None:  # None: the app was started with stdout closed
        python_stdout.flush()
    if _descriptor(python_stdout) == 1:
        sys.stdout = open(
            os.dup(1), "w", encoding=python_stdout.encoding, errors=python_stdout.errors,
            buffering=1 if python_stdout.line_buffering else -1,
        )  # fmt: skip
    os.dup2(log, 1)
    os.close(log)


def hold_closed_descriptors() -> None:
    """Point descriptors 0, 1 and 2 that the app was started without (``>&-``, ``<&-``) at /dev/null.

    Otherwise the next file opened takes the lowest free number: the history database
    would become descriptor 1, and what the TPU runtime prints to stdout would be written
    into it. Python saw them closed at start-up (``sys.stdout`` and the others are None),
    and they stay None, which is how ``-p``, ``-c`` and ``export`` know to refuse in one line.
    """
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            opened = os.open(os.devnull, os.O_RDONLY if fd == 0 else os.O_WRONLY)
            if opened != fd:
                os.dup2(opened, fd)
                os.close(opened)


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
