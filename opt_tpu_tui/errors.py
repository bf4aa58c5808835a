"""The one exception type the user sees as a message instead of a traceback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class UserError(Exception):
    """Something the user can fix: a bad path, a corrupt file, a prompt too long.

    The CLI prints ``str(error)`` on one line and exits non-zero; the TUI shows it
    in a notification. The message names the file (or the input) and the problem.
    """


def read_json_object(path: Path, missing: str) -> dict[str, Any]:
    """The JSON object in ``path``; a UserError naming the file (with hint ``missing`` if it is absent)."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: not found ({missing})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a JSON object")
    return raw
