"""User settings: one JSON file in the user config dir, validated, written atomically.

The file is ``settings.json`` in :func:`opt_tpu_tui.paths.config_dir` (on Linux
``~/.config/opt-tpu-tui/settings.json``). Every key is optional; a missing key takes
its default, an unknown key is ignored here and kept in the file. Example::

    {
      "version": 1,
      "sampling": {"max_new_tokens": 128, "temperature": 0.7, "top_k": 50,
                   "top_p": 0.9, "repetition_penalty": 1.1, "seed": null},
      "preamble": "A conversation between a curious user and ...",
      "theme": "dark",
      "last_model": "/models/opt-125m",
      "side_pane": "stats",
      "mouse": true,
      "server": null
    }

``seed`` null draws a fresh seed per reply. ``side_pane`` is "stats", "settings" or
"hidden". ``mouse`` false leaves the mouse to the terminal (its own selection works,
also over SSH), as ``--no-mouse`` does for one run. ``server`` (an address such as
"http://127.0.0.1:8000", written by hand) makes the UI, ``-p`` and ``-c`` use that running
``opt-tpu-tui serve`` instead of loading a model, unless ``--model``, ``--backend`` or
``--context`` picks one to load for the run (``--server`` picks another server). A file that is not valid JSON, or holds an out-of-range value, is renamed
to ``settings.json.corrupt-<time>`` and the defaults are used, with a warning: the
app never overwrites a file it could not read.

Several instances may run at once, so a write never puts back a whole in-memory copy:
:func:`update_settings_file` applies only the keys this instance changed on top of the
file as it is now, under an advisory lock (``settings.json.lock`` beside it). A
symlinked ``settings.json`` (dotfile managers) is written through: its target is
replaced, the link stays.

A newer version may have written the file: keys this version does not know (at the top
or in ``sampling``) are kept as they are when it saves, and a higher ``version`` is not
written back lower; nothing is lost, so nothing is said. A newer file holding a value
this version refuses (a choice it does not have yet) is not set aside as damaged: the
defaults are used for the run, with a warning, and the file is left as it is.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from opt_tpu_tui import paths
from opt_tpu_tui.atomic import atomic_write, move_aside
from opt_tpu_tui.chat import DEFAULT_PREAMBLE
from opt_tpu_tui.errors import UserError, parse_json
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
    side_pane: str = "stats"
    mouse: bool = True
    server: str | None = None  # a running `opt-tpu-tui serve` to use by default (cli.server_for)

    def validate(self) -> Settings:
        """Return self, or raise UserError naming the first bad value."""
        self.sampling.validate()
        for name in ("preamble", "theme", "side_pane"):
            if not isinstance(getattr(self, name), str):
                raise UserError(f"{name} must be text, got {getattr(self, name)!r}")
        if not self.theme.strip():
            raise UserError("theme must not be empty")
        if self.last_model is not None and not isinstance(self.last_model, str):
            raise UserError(f"last_model must be a path or null, got {self.last_model!r}")
        if self.side_pane not in SIDE_PANES:
            raise UserError(f"side_pane must be one of {', '.join(SIDE_PANES)}, got {self.side_pane!r}")
        if not isinstance(self.mouse, bool):
            raise UserError(f"mouse must be true or false, got {self.mouse!r}")
        if self.server is not None and not (isinstance(self.server, str) and self.server.strip()):
            raise UserError(f"server must be an address such as http://127.0.0.1:8000, or null, got {self.server!r}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": VERSION,
            "sampling": self.sampling.to_dict(),
            "preamble": self.preamble,
            "theme": self.theme,
            "last_model": self.last_model,
            "side_pane": self.side_pane,
            "mouse": self.mouse,
            "server": self.server,
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


class SettingsNotSaved(UserError):
    """Valid settings that could not be written (a read-only or missing config folder): keep them for this run."""


class NewerSettings(SettingsNotSaved):
    """A newer version's file with a value this one refuses: used as the defaults, never overwritten."""


def file_version(data: Any) -> int:
    """The ``version`` a settings object says it was written as (this version's when it says none, or nonsense)."""
    version = data.get("version") if isinstance(data, dict) else None
    return version if isinstance(version, int) and not isinstance(version, bool) else VERSION


def unknown_keys(data: Any) -> dict[str, Any]:
    """What of a parsed settings file this version does not read (a newer version's keys), to be written back
    as it is: top-level keys, ``sampling``'s unknown fields under "sampling", and a higher ``version``."""
    if not isinstance(data, dict):
        return {}
    known = set(Settings().to_dict())
    kept = {key: value for key, value in data.items() if key not in known}
    sampling = data.get("sampling")
    if isinstance(sampling, dict):
        fields_known = set(SamplingSettings().to_dict())
        extra = {key: value for key, value in sampling.items() if key not in fields_known}
        if extra:
            kept["sampling"] = extra
    if file_version(data) > VERSION:
        kept["version"] = file_version(data)
    return kept


def load_settings(path: Path | None = None) -> tuple[Settings, str | None]:
    """The saved settings, or the defaults when there is no file.

    Returns the settings and a warning: not None when the file was unreadable and
    has been moved aside (the warning names where it went). A file that cannot be
    read at all (a folder in the way, no permission) is a UserError: it is not
    damaged, so it is left alone. A newer version's file with a value this version
    refuses gives the defaults and a warning, the file left as it is (NewerSettings).
    """
    try:
        return _load(path)
    except NewerSettings as newer:
        return Settings(), str(newer)


def _load(path: Path | None = None) -> tuple[Settings, str | None]:
    """:func:`load_settings`, but NewerSettings for a newer file it cannot use (so nothing is saved over it)."""
    path = path or paths.settings_file()
    paths.private_dir(path.parent, create=False)
    paths.tighten(path, paths.PRIVATE_FILE)  # left readable by an older version
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Settings(), None
    except UnicodeDecodeError as error:
        problem = str(error)
    except OSError as error:
        raise UserError(f"{path}: cannot read the settings ({error.strerror or error})") from None
    else:
        try:
            data = parse_json(text)
        except UserError as error:
            problem = str(error)
        else:
            try:
                return Settings.from_dict(data), None
            except UserError as error:
                problem = str(error)
                if file_version(data) > VERSION:  # not damaged: a newer version's, which still needs it as it is
                    raise NewerSettings(
                        f"{path}: written by a newer opt-tpu-tui (version {file_version(data)}), and {problem}: "
                        "using the defaults this run, and leaving the file as it is"
                    ) from None
    aside = move_aside(path, time.strftime("%Y%m%d-%H%M%S"))
    return Settings(), f"{path}: {problem}; moved it to {aside.name} and started from the defaults"


def save_settings(settings: Settings, path: Path | None = None, keep: Mapping[str, Any] | None = None) -> None:
    """Validate and write ``settings`` whole, atomically, with ``keep`` (:func:`unknown_keys`) beside them;
    UserError if a value is out of range.

    Several instances may be running: :func:`update_settings_file` is what they use.
    """
    settings.validate()
    path = path or paths.settings_file()
    data = settings.to_dict()
    for key, value in (keep or {}).items():
        data[key] = {**data["sampling"], **value} if key == "sampling" else value
    text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    try:
        paths.private_dir(path.parent)
        atomic_write(path.resolve() if path.is_symlink() else path, text)  # through a symlink, keeping it
    except (OSError, UserError) as error:
        raise _not_saved(path, error) from None


def changed_values(old: Settings, new: Settings) -> dict[str, Any]:
    """What ``new`` changes from ``old``, as JSON values; ``sampling`` holds only its changed fields."""
    before, after = old.to_dict(), new.to_dict()
    changes = {key: value for key, value in after.items() if key != "sampling" and before[key] != value}
    sampling = {key: value for key, value in after["sampling"].items() if before["sampling"][key] != value}
    if sampling:
        changes["sampling"] = sampling
    return changes


def update_settings_file(changes: Mapping[str, Any], path: Path | None = None) -> Settings:
    """Write ``changes`` (JSON values, e.g. from :func:`changed_values`) on top of the file as it is now.

    Keys not in ``changes`` keep what is on disk, which may be another instance's
    newer value; ``sampling`` merges per field. Returns the settings now on disk.
    UserError if the result is out of range (nothing written), SettingsNotSaved if
    the file cannot be written. No changes, no write.
    """
    path = path or paths.settings_file()
    if not changes:  # no lock either: a read-only config folder is fine while nothing changes
        return load_settings(path)[0]
    with _locked(path):
        current, _ = _load(path)  # a damaged file is set aside as at start; a newer one refused raises
        merged = current.to_dict()
        for key, value in changes.items():
            merged[key] = {**merged["sampling"], **value} if key == "sampling" else value
        settings = Settings.from_dict(merged)
        save_settings(settings, path, keep=unknown_keys(_read_back(path)))
    return settings


def _read_back(path: Path) -> Any:
    """The file's JSON as :func:`load_settings` just read it (None when there is none)."""
    try:
        return parse_json(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, UserError):
        return None


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold the advisory lock of ``path`` (a file beside it) so read-modify-write cycles do not interleave."""
    lock = path.with_name(path.name + ".lock")
    try:
        paths.private_dir(path.parent)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, paths.PRIVATE_FILE)
    except (OSError, UserError) as error:
        raise _not_saved(lock, error) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _not_saved(path: Path, error: OSError | UserError) -> SettingsNotSaved:
    """One line for a failed write: a UserError already names its folder, an OSError gets ``path``."""
    if isinstance(error, UserError):
        return SettingsNotSaved(str(error))
    return SettingsNotSaved(f"{path}: cannot save the settings ({error.strerror or error})")
