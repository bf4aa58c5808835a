"""Every user path the app touches, in one place.

platformdirs picks the per-OS folders and honours ``XDG_CONFIG_HOME`` /
``XDG_DATA_HOME`` / ``XDG_CACHE_HOME`` on Linux, which is how tests keep
their files in a temporary folder. Nothing here creates a folder: writers do,
so that merely importing the app never touches the disk.
"""

from __future__ import annotations

from pathlib import Path

import platformdirs

APP = "opt-tpu-tui"


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


def user_themes_dir() -> Path:
    """Extra ``*.tcss`` themes a user drops in; they override shipped ones of the same name."""
    return config_dir() / "themes"


def native_output_log() -> Path:
    """What C libraries (the TPU runtime, the simulator) print to stdout while the UI is on screen."""
    return cache_dir() / "native-output.log"
