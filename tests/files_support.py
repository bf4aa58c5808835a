"""Helpers for tests of file permissions and of folders the app cannot write."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest


def refuse_writes_under(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Simulate a read-only mount: ``os.open`` fails with EROFS for any write or create under ``folder``.

    The tests run as root, which ignores permission bits, so ``chmod 0500`` would not
    do. ``tempfile.mkstemp`` (behind ``atomic_write``) and the app's own creation of
    lock, marker and database files go through ``os.open``; SQLite's opens do not,
    which is why the history store makes its file with ``os.open`` first.
    """
    real_open = os.open
    folder = Path(folder).resolve()

    def refusing_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        target = Path(path).resolve()
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and folder in (target, *target.parents):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", refusing_open)


def mode(path: Path) -> int:
    """The permission bits of ``path``."""
    return path.stat().st_mode & 0o777
