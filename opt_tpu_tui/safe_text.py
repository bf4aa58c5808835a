"""Model text made safe to print on a terminal: no control character reaches it.

A model's reply is text someone else can steer (a pasted document, a web page in the
prompt), and a terminal obeys escape sequences wherever they come from: ``ESC ] 0 ;``
renames the window, ``ESC ] 52 ;`` writes the user's clipboard, ``ESC [`` moves the
cursor and changes colours. So every front end (``-p``, ``-c``, the TUI, and
conversations reopened from history) shows C0 and C1 control characters and DEL as
visible symbols instead of sending them: ESC becomes ``␛``, a C1 character the ``␛``
form it stands for (U+009B, CSI, becomes ``␛[``), the other C0 characters their
Unicode control pictures. Newline and tab pass through. The Unicode bidirectional
overrides, embeddings and isolates (U+202A-U+202E, U+2066-U+2069), which make a
terminal that does bidi show text in another order than it is stored ("Trojan Source"),
are shown as their code point, ``<U+202E>``; right-to-left letters themselves pass.
The text kept for the model (the transcript and the history) is left as generated;
only what is shown changes.
"""

from __future__ import annotations

_KEEP = {"\n", "\t"}


def _table() -> dict[int, str]:
    table: dict[int, str] = {}
    for code in range(0x20):
        if chr(code) not in _KEEP:
            table[code] = chr(0x2400 + code)  # ␀ … ␟ (␛ for ESC)
    table[0x7F] = "\u2421"  # ␡
    for code in range(0x80, 0xA0):
        table[code] = "\u241b" + chr(code - 0x40)  # C1: the 7-bit ESC form, shown
    for code in (*range(0x202A, 0x202F), *range(0x2066, 0x206A)):
        table[code] = f"<U+{code:04X}>"  # bidi embeddings, overrides and isolates
    return table


_TABLE = _table()


def terminal_safe(text: str) -> str:
    """``text`` with every control character but newline and tab (and every bidi override) made visible."""
    return text.translate(_TABLE)
