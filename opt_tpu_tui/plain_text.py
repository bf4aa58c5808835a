"""What a terminal that is not UTF-8 is sent: an ASCII stand-in for each character it cannot show.

The app draws with Unicode: box-drawing borders, block bars, arrows, the ``␛`` of a
control character a model wrote, and whatever letters the model writes. On a terminal
set to another charset (a Latin-1 PuTTY, a box whose locale says ISO-8859-1), Python
writes what that charset cannot carry as ``\\u2502`` escapes: six cells where the layout
counted one, and the screen falls apart. So the output streams get an error handler
that writes an ASCII stand-in instead, taking exactly as many cells as the character
did (a border ``│`` is ``|``, ``╭`` is ``+``, ``▲`` is ``^``, ``é`` is ``e``, a wide
CJK character ``??``). Characters the charset has pass through unchanged. ``--ascii``
sends ASCII only, for a terminal whose locale claims UTF-8 but whose font or
multiplexer does not have the glyphs.

One place for all of it, at the stream: whatever draws (Textual, Rich's Markdown, the
app's own widgets, ``-p`` and ``-c``) is covered.

The terminal's charset is what the locale environment names (``LC_ALL``, else
``LC_CTYPE``, else ``LANG``), not Python's stream encoding: under ``LANG=C`` or
``LC_ALL=C`` Python switches to UTF-8 (PEP 538 sets ``LC_CTYPE=C.UTF-8`` in the
environment, PEP 540 UTF-8 mode), while the terminal there is ASCII. So C and POSIX
mean ASCII, a locale with a codeset (``de_DE.ISO-8859-1``) means that codeset, and one
without a codeset, or no locale variable at all (a stripped environment), leaves the
stream's encoding as Python chose it.
"""

from __future__ import annotations

import codecs
import functools
import os
import sys
import unicodedata
from collections.abc import Mapping
from typing import TextIO

from rich.cells import cell_len

ERRORS = "opt-tpu-tui-ascii"  # the codecs error handler's name

_SINGLE = {
    "←": "<", "→": ">", "↑": "^", "↓": "v", "▲": "^", "▼": "v", "◀": "<", "▶": ">", "‹": "<", "›": ">",
    "•": "*", "·": ".", "…": ".", "■": "#", "□": "#", "●": "*", "○": "o", "⚠": "!", "✓": "v", "✗": "x",
    "“": '"', "”": '"', "‘": "'", "’": "'", "—": "-", "–": "-", "−": "-", "×": "x", "°": "o",
    "\u00a0": " ", "\u2009": " ", "\u202f": " ",
}  # fmt: skip


@functools.lru_cache(maxsize=4096)
def stand_in(char: str) -> str:
    """ASCII for one character, as many cells wide as the character is."""
    if char in _SINGLE:
        return _SINGLE[char]
    width = cell_len(char)
    if width == 0:
        return ""  # a combining mark: its base letter already stands in
    name = unicodedata.name(char, "")
    if name.startswith("BOX DRAWINGS"):
        return _box(name)
    if 0x2580 <= ord(char) <= 0x259F:  # block elements
        return _block(name)
    if name.startswith("SYMBOL FOR ") or 0x2400 <= ord(char) <= 0x243F:  # ␛ and the other control pictures
        return "?"
    base = unicodedata.normalize("NFKD", char).encode("ascii", "ignore").decode()
    if len(base) == width:
        return base  # é -> e, ﬁ stays out (two letters for one cell)
    return "?" * width


def _box(name: str) -> str:
    vertical, horizontal = "VERTICAL" in name or " UP" in name or " DOWN" in name, "HORIZONTAL" in name
    if "DIAGONAL" in name:
        return "X" if "CROSS" in name else ("/" if "UPPER RIGHT TO LOWER LEFT" in name else "\\")
    if "ARC" in name or (vertical and (horizontal or " AND " in name)):
        return "+"  # corners and junctions
    if horizontal or "LEFT" in name or "RIGHT" in name:
        return "-"
    return "|"


def _block(name: str) -> str:
    if "LEFT" in name or "RIGHT" in name:
        return "|"  # the bars at a message's side
    if "UPPER" in name:
        return "-"
    if "LOWER" in name:
        return "_"
    return "#"  # full block, shades, quadrants


def _handler(error: UnicodeError) -> tuple[str, int]:
    if not isinstance(error, UnicodeEncodeError):
        raise error
    return "".join(stand_in(char) for char in error.object[error.start : error.end]), error.end


codecs.register_error(ERRORS, _handler)


def is_utf8(stream: TextIO) -> bool:
    encoding = getattr(stream, "encoding", None) or "ascii"
    try:
        return codecs.lookup(encoding).name == "utf-8"
    except LookupError:
        return False


def can_show(text: str, stream: TextIO) -> bool:
    """Whether ``stream`` writes ``text`` as it is (no stand-ins): its charset has every character."""
    try:
        text.encode(getattr(stream, "encoding", None) or "ascii")
    except (UnicodeEncodeError, LookupError):
        return False
    return True


COERCED = ("C.UTF-8", "C.utf8", "UTF-8")  # what Python puts in LC_CTYPE when it coerces the C locale (PEP 538)


def locale_charset(environ: Mapping[str, str] | None = None, utf8_mode: bool | None = None) -> str | None:
    """The charset the locale environment gives the terminal: "ascii" for C and POSIX, the codeset of a
    locale that names one, None where it names none (the stream's encoding is then trusted).

    ``LC_CTYPE`` is passed over when Python set it itself (UTF-8 mode on, ``LC_ALL`` unset,
    a coercion target in it): the user's locale is then the C one it replaced.
    """
    environ = os.environ if environ is None else environ
    utf8_mode = bool(sys.flags.utf8_mode) if utf8_mode is None else utf8_mode
    value = ""
    for name in ("LC_ALL", "LC_CTYPE", "LANG"):
        value = environ.get(name, "")
        if name == "LC_CTYPE" and utf8_mode and not environ.get("LC_ALL") and value in COERCED:
            value = "C"  # Python's coercion of the C locale (only a C locale is coerced)
        if value:
            break
    if not value:
        return None  # nothing set at all: a stripped environment, not a statement about the terminal
    if value in ("C", "POSIX"):
        return "ascii"
    codeset = value.split("@")[0].partition(".")[2]
    try:
        return codecs.lookup(codeset).name if codeset else None
    except LookupError:
        return None


def plain_output(stream: TextIO, *, ascii_only: bool = False, environ: Mapping[str, str] | None = None) -> bool:
    """Make ``stream`` write stand-ins for what the terminal's charset (or with ``ascii_only``, ASCII) cannot carry.

    The charset is the stream's encoding where that is not UTF-8 (PYTHONIOENCODING said
    so), else the locale's (:func:`locale_charset`), which Python's UTF-8 mode hides.
    Returns whether it changed anything: nothing for UTF-8 unless ``ascii_only``.
    """
    reconfigure = getattr(stream, "reconfigure", None)
    if ascii_only:
        charset = "ascii"
    elif not is_utf8(stream):  # Python was told a narrower one (PYTHONIOENCODING): that one
        charset = getattr(stream, "encoding", None) or "ascii"
    else:
        charset = locale_charset(environ) or "utf-8"
    if reconfigure is None or codecs.lookup(charset).name == "utf-8":
        return False
    stream.flush()
    reconfigure(encoding=charset, errors=ERRORS)
    return True
