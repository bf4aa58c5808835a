"""The app's terminal input: an escape that arrives with the next key is two keys, known sequences stay whole."""

from __future__ import annotations

import pytest

from opt_tpu_tui.tui.driver import EscapeKeepingParser


def keys(data: str) -> list[str]:
    parser = EscapeKeepingParser(debug=False)
    return [getattr(event, "key", type(event).__name__) for event in [*parser.feed(data), *parser.feed("")]]


@pytest.mark.parametrize(
    "data, expected",
    [
        ("\x1babc", ["escape", "a", "b", "c"]),  # Textual 8 alone: alt+a, b, c
        ("\x1b\x06hi", ["escape", "ctrl+f", "h", "i"]),  # Textual 8 alone: the escape dropped
        ("\x1b\rx", ["escape", "enter", "x"]),
        ("\x1b\x1bq", ["escape", "escape", "q"]),
        ("\x1b[Aab", ["up", "a", "b"]),  # sequences are not split
        ("\x1bOR", ["f3"]),
        ("\x1b[1;3D", ["alt+left"]),
        ("\x1b[200~paste\x1b[201~", ["Paste"]),
        ("\x1b", ["escape"]),
    ],
)
def test_an_escape_before_a_lone_key_is_kept(data: str, expected: list[str]) -> None:
    assert keys(data) == expected
