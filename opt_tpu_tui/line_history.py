"""The messages typed in ``-c``, kept between sessions as a shell keeps its history (↑ recalls them).

One JSON string a line, so that a message of several lines stays one entry. Each
message is appended with a single write to the file opened for appending, so sessions
running at once do not tear each other's lines; the file is private (0600 in the 0700
data folder), as the messages are. Once it holds twice KEEP entries it is rewritten
atomically with the last KEEP; an entry another session appends during that rewrite
can be lost, which a history can afford. A file that cannot be read or written leaves
the history in memory only, said once on stderr, and the chat goes on.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from opt_tpu_tui import paths
from opt_tpu_tui.atomic import atomic_write
from opt_tpu_tui.errors import UserError, special_file

KEEP = 1000  # entries loaded, and kept when the file is trimmed


class LineHistory:
    """The history file at ``path``: ``load`` its entries, ``append`` each new message."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.failed = False  # after a failure, nothing more is tried (and said)

    def load(self) -> list[str]:
        """The last KEEP entries, oldest first; lines that are not a JSON string are skipped."""
        try:
            paths.private_dir(self.path.parent, create=False)
            self._check()
            paths.tighten(self.path, paths.PRIVATE_FILE)
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return []
        except (OSError, UserError) as error:
            self._fail(error)
            return []
        entries = [entry for entry in map(_entry, text.splitlines()) if entry is not None]
        if len(entries) >= 2 * KEEP:
            entries = entries[-KEEP:]
            try:
                atomic_write(self.path, "".join(_line(entry) for entry in entries), paths.PRIVATE_FILE)
            except OSError as error:
                self._fail(error)
        return entries[-KEEP:]

    def append(self, message: str) -> None:
        """Add ``message`` at the end of the file, in one write."""
        if self.failed or not _utf8(message):  # a line that is not UTF-8 is refused by the chat too
            return
        data = _line(message).encode("utf-8")
        try:
            paths.private_dir(self.path.parent)
            self._check()
            paths.private_file(self.path)
            descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND)
            try:
                os.write(descriptor, data)
            finally:
                os.close(descriptor)
        except (OSError, UserError) as error:
            self._fail(error)

    def _check(self) -> None:
        """A UserError when something else than a file is at the path: opening a FIFO would wait forever."""
        kind = special_file(self.path)
        if kind is not None:
            raise UserError(f"it is {kind}, not a file; move it away")

    def _fail(self, error: Exception) -> None:
        self.failed = True
        reason = getattr(error, "strerror", None) or str(error)
        print(f"opt-tpu-tui: warning: {self.path}: the line history stays in memory ({reason})", file=sys.stderr)


def _line(message: str) -> str:
    return json.dumps(message) + "\n"


def _entry(line: str) -> str | None:
    try:
        entry = json.loads(line)
    except ValueError:
        return None
    return entry if isinstance(entry, str) and entry.strip() and _utf8(entry) else None


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
