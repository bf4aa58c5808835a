"""User settings: one JSON file in the user config dir, validated, written atomically.

The file is ``settings.json`` in :func:`opt_tpu_tui.paths.config_dir` (on Linux
``~/.config/opt-tpu-tui/settings.json``). Every key is optional; a missing key takes
its default, an unknown key is ignored. Example::

    {
      "version": 1,
      "sampling": {"max_new_tokens": 128, "temperature": 0.7, "top_k": 50,
                   "top_p": 0.9, "repetition_penalty": 1.1, "seed": null},
      "preamble": "A conversation between a curious user and ...",
      "theme": "dark",
      "last_model": "/models/opt-125m",
      "backend": "auto",
      "side_pane": "stats"
    }

``seed`` null draws a fresh seed per reply. ``side_pane`` is "stats", "settings" or
"hidden". A file that is not valid JSON, or holds an out-of-range value, is renamed
to ``settings.json.corrupt-<time>`` and the defaults are used, with a warning: the
app never overwrites a file it could not read.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from opt_tpu_tui import paths
from opt_tpu_tui.atomic import atomic_write, move_aside
from opt_tpu_tui.backends import BACKENDS
from opt_tpu_tui.chat import DEFAULT_PREAMBLE
from opt_tpu_tui.errors import UserError
from opt_tpu_tui.sampling import SamplingSettings

VERSION = 1
DEFAULT_THEME = "dark"
SIDE_PANES = ("stats", "settings", "hidden")


@dataclass(frozen=True)
class Settings:
    """Everything the app remembers between runs; frozen so a reply keeps the values it started with."""

    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    preamble: str = DEFAULT_PREAMBLE
    theme: str = DEFAULT_THEME
    last_model: str | None = None
    backend: str = "auto"
    side_pane: str = "stats"

    def validate(self) -> Settings:
        """Return self, or raise UserError naming the first bad value."""
        self.sampling.validate()
        for name in ("preamble", "theme", "backend", "side_pane"):
            if not isinstance(getattr(self, name), str):
                raise UserError(f"{name} must be text, got {getattr(self, name)!r}")
        if not self.theme.strip():
            raise UserError("theme must not be empty")
        if self.last_model is not None and not isinstance(self.last_model, str):
            raise UserError(f"last_model must be a path or null, got {self.last_model!r}")
        if self.backend not in BACKENDS:
            raise UserError(f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.side_pane not in SIDE_PANES:
            raise UserError(f"side_pane must be one of {', '.join(SIDE_PANES)}, got {self.side_pane!r}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": VERSION,
            "sampling": self.sampling.to_dict(),
            "preamble": self.preamble,
            "theme": self.theme,
            "last_model": self.last_model,
            "backend": self.backend,
            "side_pane": self.side_pane,
        }

    @classmethod
    def from_dict(cls, data: Any) -> Settings:
        """Build and validate settings from parsed JSON; raise UserError on any bad value."""
        if not isinstance(data, dict):
            raise UserError("expected a JSON object")
        sampling_data = data.get("sampling", {})
        if not isinstance(sampling_data, dict):
            raise UserError("sampling must be an object")
        known = {f.name for f in fields(SamplingSettings)}
        try:
            sampling = SamplingSettings(**{k: v for k, v in sampling_data.items() if k in known})
        except TypeError as error:  # pragma: no cover - unreachable with the filter above
            raise UserError(f"sampling: {error}") from None
        defaults = cls()
        values = {f.name: data.get(f.name, getattr(defaults, f.name)) for f in fields(cls) if f.name != "sampling"}
        return cls(sampling=sampling, **values).validate()


def load_settings(path: Path | None = None) -> tuple[Settings, str | None]:
    """The saved settings, or the defaults when there is no file.

    Returns the settings and a warning: not None when the file was unreadable and
    has been moved aside (the warning names where it went).
    """
    path = path or paths.settings_file()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Settings(), None
    except (OSError, UnicodeDecodeError) as error:
        problem = str(error)
    else:
        try:
            return Settings.from_dict(json.loads(text)), None
        except json.JSONDecodeError as error:
            problem = f"not valid JSON ({error})"
        except UserError as error:
            problem = str(error)
    aside = move_aside(path, time.strftime("%Y%m%d-%H%M%S"))
    return Settings(), f"{path}: {problem}; moved it to {aside.name} and started from the defaults"


def save_settings(settings: Settings, path: Path | None = None) -> None:
    """Validate and write ``settings`` atomically; raise UserError if a value is out of range."""
    settings.validate()
    text = json.dumps(settings.to_dict(), indent=2, ensure_ascii=False) + "\n"
    atomic_write(path or paths.settings_file(), text)
