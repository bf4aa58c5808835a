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
"""

from __future__ import annotations

import codecs
import functools
import unicodedata
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


def plain_output(stream: TextIO, *, ascii_only: bool = False) -> bool:
    """Make ``stream`` write stand-ins for what its charset (or with ``ascii_only``, ASCII) cannot carry.

    Returns whether it changed anything: nothing for a UTF-8 stream unless ``ascii_only``.
    """
    reconfigure = getattr(stream, "reconfigure", None)
    if reconfigure is None or (is_utf8(stream) and not ascii_only):
        return False
    stream.flush()
    reconfigure(encoding="ascii" if ascii_only else None, errors=ERRORS)
    return True
