"""The one exception type the user sees as a message instead of a traceback."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any


class UserError(Exception):
    """Something the user can fix: a bad path, a corrupt file, a prompt too long.

    The CLI prints ``str(error)`` on one line and exits non-zero; the TUI shows it
    in a notification. The message names the file (or the input) and the problem.
    """


def check_regular_file(path: Path, missing: str) -> Path:
    """``path`` if it is a regular file (or a link to one); else a UserError naming it (hint ``missing`` if absent).

    Checked before opening: a FIFO would block the read forever, a device could be endless.
    """
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise UserError(f"{path}: not found ({missing})") from None
    except (OSError, RuntimeError) as error:  # RuntimeError: a symlink loop, on Python < 3.13
        raise UserError(f"{path}: cannot be read ({getattr(error, 'strerror', None) or error})") from None
    if not stat.S_ISREG(mode):
        raise UserError(f"{path}: not a regular file ({missing})")
    return path


SPECIAL_FILES = (
    (stat.S_ISFIFO, "a FIFO"), (stat.S_ISDIR, "a folder"), (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
)


def special_file(path: Path) -> str | None:
    """What is at ``path`` when it is there but is not a regular file (or a link to one): "a FIFO", "a folder", ...

    For a file the app opens for writing as well as reading, where a missing one is fine (it
    is created): the same check as :func:`check_regular_file`, made before the open, since
    opening a FIFO waits for its other end forever. None when missing or unreadable (the open says why).
    """
    try:
        mode = os.stat(path).st_mode
    except (OSError, RuntimeError, ValueError):
        return None
    if stat.S_ISREG(mode):
        return None
    return next((name for test, name in SPECIAL_FILES if test(mode)), "not a regular file")


def parse_json(text: str) -> Any:
    """``json.loads``, with every way it can fail as a UserError: even too deep nesting
    (RecursionError) and integers past Python's digit limit (ValueError)."""
    try:
        return json.loads(text)
    except RecursionError:
        raise UserError("not valid JSON (nested too deeply)") from None
    except ValueError as error:  # JSONDecodeError, and int() refusing thousands of digits
        raise UserError(f"not valid JSON ({error})") from None


def read_json_object(path: Path, missing: str) -> dict[str, Any]:
    """The JSON object in ``path``; a UserError naming the file (with hint ``missing`` if it is absent).

    """
    try:
        text = check_regular_file(path, missing).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"{path}: not valid JSON ({error})") from None
    try:
        raw = parse_json(text)
    except UserError as error:
        raise UserError(f"{path}: {error}") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a JSON object")
    return raw


def is_plain_name(name: str) -> bool:
    """Whether ``name`` names an entry of a folder itself: not empty, no separator, not ``.`` or ``..``."""
    return name not in ("", ".", "..") and "/" not in name and "\\" not in name and "\0" not in name
