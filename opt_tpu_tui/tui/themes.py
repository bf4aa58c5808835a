"""Themes from ``themes/*.tcss`` files, turned into Textual ``Theme`` objects.

A theme file is Textual CSS holding ``$name: value;`` declarations (see
``themes/dark.tcss``). Files are looked up in the source checkout's ``themes/``
folder, in the installed data folder (``<prefix>/share/opt-tpu-tui/themes``, where
the wheel puts them), then in the user's ``<config>/themes``; a later file of the
same name wins, so a user can restyle a shipped theme.
"""

from __future__ import annotations

import re
import site
import sys
import sysconfig
from pathlib import Path

from textual.color import Color, ColorParseError
from textual.theme import Theme

from opt_tpu_tui import paths

COLOURS = ("primary", "secondary", "warning", "error", "success", "accent", "foreground", "background", "surface", "panel", "boost")
DECLARATION = re.compile(r"^\s*\$([A-Za-z0-9_-]+)\s*:\s*([^;]+?)\s*;", re.MULTILINE)
COMMENT = re.compile(r"/\*.*?\*/", re.DOTALL)


def shipped_theme_dirs() -> list[Path]:
    """Where packaged themes may be: the checkout (editable installs) and the wheel's data folder."""
    checkout = Path(__file__).resolve().parents[2] / "themes"
    share = Path("share") / paths.APP / "themes"
    roots = [Path(sysconfig.get_path("data")), Path(sys.prefix)]
    user_base = getattr(site, "USER_BASE", None)
    if user_base:
        roots.append(Path(user_base))
    dirs = [checkout] + [root / share for root in roots]
    unique: list[Path] = []
    for folder in dirs:
        if folder not in unique:
            unique.append(folder)
    return unique


def parse_theme(name: str, text: str) -> Theme:
    """A Theme from the declarations in a theme file; ValueError if it has no ``$primary`` or a bad colour.

    Colours are checked here, at load, because Textual parses them only when the theme
    is applied: a bad one saved as the current theme would crash every start.
    """
    values = {key: value for key, value in DECLARATION.findall(COMMENT.sub("", text))}
    if "primary" not in values:
        raise ValueError(f"theme {name!r} declares no $primary colour")
    dark = values.pop("dark", "true").strip().lower() not in ("false", "no", "0")
    colours = {key: values.pop(key) for key in COLOURS if key in values}
    defaults = Theme(name=name, primary="black").to_color_system().generate()
    for key, value in [*colours.items(), *values.items()]:
        if key in COLOURS or _is_colour(defaults.get(key, "")):
            try:
                Color.parse(value)
            except ColorParseError:
                raise ValueError(f"${key}: {value!r} is not a colour") from None
    return Theme(name=name, dark=dark, variables=values, **colours)


def _is_colour(value: str) -> bool:
    try:
        Color.parse(value)
    except ColorParseError:
        return False
    return True


def load_themes(extra_dirs: list[Path] | None = None) -> tuple[dict[str, Theme], list[str]]:
    """All themes found, by name, and one warning per file that could not be read."""
    themes: dict[str, Theme] = {}
    warnings: list[str] = []
    folders = shipped_theme_dirs() + [paths.user_themes_dir()] + (extra_dirs or [])
    for folder in folders:
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.tcss")):
            try:
                themes[path.stem] = parse_theme(path.stem, path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, ValueError) as error:
                warnings.append(f"{path}: {error}")
    return themes, warnings
