"""Every user path the app touches, in one place.

platformdirs picks the per-OS folders and honours ``XDG_CONFIG_HOME`` /
``XDG_DATA_HOME`` / ``XDG_CACHE_HOME`` on Linux, which is how tests keep
their files in a temporary folder. Nothing here creates a folder on import:
writers call :func:`private_dir`, so that merely importing the app never touches
the disk.

Privacy: conversations and settings are nobody else's business, so the app's own
folders are 0700 and every file it writes 0600, whatever the umask; folders and
files left group- or world-readable by older versions are tightened when opened.
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

from opt_tpu_tui.errors import UserError

APP = "opt-tpu-tui"
PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


def config_dir() -> Path:
    """Settings and user themes (``~/.config/opt-tpu-tui`` on Linux)."""
    return Path(platformdirs.user_config_dir(APP, appauthor=False))


def data_dir() -> Path:
    """Conversation history (``~/.local/share/opt-tpu-tui`` on Linux)."""
    return Path(platformdirs.user_data_dir(APP, appauthor=False))


def cache_dir() -> Path:
    """Disposable files (``~/.cache/opt-tpu-tui`` on Linux)."""
    return Path(platformdirs.user_cache_dir(APP, appauthor=False))


def settings_file() -> Path:
    return config_dir() / "settings.json"


def history_file() -> Path:
    return data_dir() / "history.sqlite3"


def line_history_file() -> Path:
    """The messages typed in ``-c``, for ↑ in later sessions (line_history.py)."""
    return data_dir() / "line-history.jsonl"


def user_themes_dir() -> Path:
    """Extra ``*.tcss`` themes a user drops in; they override shipped ones of the same name."""
    return config_dir() / "themes"


def native_output_log() -> Path:
    """What C libraries (the TPU runtime, the simulator) print to stdout while the UI is on screen."""
    return cache_dir() / "native-output.log"


def private_dir(path: Path, create: bool = True) -> Path:
    """The app folder ``path``, made (parents as the umask says) or tightened to 0700.

    With ``create`` False a missing folder stays missing (a reader has nothing to
    tighten). A file in the way, or a folder that cannot be made, is a UserError
    naming ``path``: the user has to move something, and a traceback would not say what.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{path}: is a file, not a folder; move it away so opt-tpu-tui can keep its files there")
    if not create and not path.exists():
        return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.mkdir(mode=PRIVATE_DIR, exist_ok=True)
    except OSError as error:
        raise UserError(f"{path}: cannot create this folder ({error.strerror or error})") from None
    tighten(path, PRIVATE_DIR)
    return path


def private_file(path: Path) -> Path:
    """Create ``path`` empty as 0600 if it is missing, else tighten it; OSError if it cannot be opened for writing."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, PRIVATE_FILE))
    tighten(path, PRIVATE_FILE)
    return path


def tighten(path: Path, mode: int) -> None:
    """Drop the permission bits of ``path`` beyond ``mode`` (best effort: a read-only mount keeps its bits)."""
    try:
        current = os.stat(path).st_mode & 0o777
        if current & ~mode:
            os.chmod(path, current & mode)
    except OSError:
        pass
