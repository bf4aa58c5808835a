"""A terminal that is not UTF-8: ASCII stand-ins, one cell for one cell, from every front end."""

from __future__ import annotations

import os
import re
import sys
import subprocess
import time
import unicodedata
from pathlib import Path

import pytest
import tmux
from hostile import VISIBLE, make_hostile_model
from pty_child import PtyChild
from rich.cells import cell_len

from opt_tpu_tui.plain_text import stand_in

CTRL_Q = b"\x11"
SAMPLES = (
    [chr(c) for c in range(0x2500, 0x25A0)]  # box drawing and blocks: borders, bars, scrollbars
    + [chr(c) for c in range(0xA0, 0x180)]  # Latin-1 and Latin Extended-A
    + list("←→↑↓▲▼◀▶‹›•·…■⚠✓␛␇中文한글😀ß")
)


def test_a_stand_in_is_ascii_and_as_wide_as_the_character() -> None:
    wrong = {c: stand_in(c) for c in SAMPLES if not (stand_in(c).isascii() and stand_in(c).isprintable())}
    wrong.update({c: stand_in(c) for c in SAMPLES if len(stand_in(c)) != cell_len(c)})
    assert not wrong


def test_stand_ins_keep_what_a_reader_needs() -> None:
    assert "".join(map(stand_in, "╭─┬─╮│├┼┤╰┴╯")) == "+-+-+|++++++"
    assert "".join(map(stand_in, "▌▐█▀▄")) == "||#-_"
    assert "".join(map(stand_in, "éüñçÅ")) == "euncA"
    assert stand_in("中") == "??" and stand_in("\u0301") == ""  # wide: two cells; combining: none
    assert unicodedata.name("␛") and stand_in("␛") == "?"


@pytest.fixture(scope="module")
def hostile_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_hostile_model(tmp_path_factory.mktemp("plain") / "hostile-opt")


needs_script = pytest.mark.skipif(not Path(tmux.SCRIPT).exists(), reason="needs the installed opt-tpu-tui console script")


@needs_script
@pytest.mark.parametrize("encoding", ["latin-1", "ascii"])
def test_prompt_mode_on_a_terminal_that_is_not_utf8(hostile_model: Path, encoding: str) -> None:
    """The reply's ␛ symbols are not in the charset: before, Python raised UnicodeEncodeError mid-reply."""
    argv = [tmux.SCRIPT, "-p", "hi", "--model", str(hostile_model), "--backend", "cpu", "--temperature", "0"]
    env = {**os.environ, **tmux.app_env({"PYTHONIOENCODING": encoding})}
    result = subprocess.run(argv, env=env, capture_output=True, timeout=120)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    out = result.stdout.decode(encoding)
    assert VISIBLE in out and "?]0;" in out  # the escape shown as a stand-in, the text intact
    assert b"\\u" not in result.stdout and "\ufffd" not in out


def run_ui(model: Path, env: dict[str, str], *extra: str) -> bytes:
    """Every byte the full-screen app writes while it answers "hi" and quits, on a 100x30 pty."""
    argv = [tmux.SCRIPT, "--model", str(model), "--backend", "cpu", "--temperature", "0", *extra]
    child = PtyChild(argv, {**os.environ, **tmux.app_env(env)}, size=(100, 30))
    try:
        child.expect("ready")
        child.send(b"hi")
        time.sleep(0.3)
        child.send(b"\r")
        child.expect(VISIBLE)  # the reply's last words
        child.send(CTRL_Q)
        assert child.exit_code() == 0
        return child.output
    finally:
        child.close()


@needs_script
@pytest.mark.parametrize(
    "env, extra",
    [({"PYTHONIOENCODING": "ascii"}, ()), ({}, ("--ascii",))],
    ids=["ascii-terminal", "ascii-flag"],
)
def test_the_ui_sends_only_ascii_when_the_terminal_needs_it(hostile_model: Path, env: dict[str, str], extra: tuple[str, ...]) -> None:
    output = run_ui(hostile_model, env, *extra)
    assert max(output) < 0x80, sorted({b for b in output if b >= 0x80})[:10]
    assert b"\\u25" not in output  # no box drawing written as Python escapes
    text = re.sub(rb"\x1b\[[0-9;?]*[A-Za-z]", b"", output).decode("ascii")
    assert "Send" in text and VISIBLE in text
    assert "enter Send" in text and "? Send" not in text  # the footer names the key it cannot draw


@needs_script
def test_the_ui_keeps_unicode_on_a_utf8_terminal(hostile_model: Path) -> None:
    """The stand-ins are a fallback: a UTF-8 terminal still gets the real glyphs (and the checks above can fail)."""
    output = run_ui(hostile_model, {})
    assert "␛".encode() in output and any(b >= 0x80 for b in output)


def test_a_key_the_terminal_cannot_draw_is_shown_by_its_stand_in_or_its_name(monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from textual.binding import Binding

    from opt_tpu_tui.tui.app import OptTuiApp

    monkeypatch.setattr(sys, "__stderr__", io.TextIOWrapper(io.BytesIO(), encoding="ascii"))
    display = OptTuiApp.get_key_display
    app = object.__new__(OptTuiApp)  # the method reads only the binding and the stream
    assert display(app, Binding("up", "step(1)", key_display="↑↓")) == "^v"
    assert display(app, Binding("enter", "submit")) == "enter"  # ⏎ has no stand-in but ?
    assert display(app, Binding("ctrl+j", "newline")) == "^j"
    monkeypatch.setattr(sys, "__stderr__", io.TextIOWrapper(io.BytesIO(), encoding="utf-8"))
    assert display(app, Binding("enter", "submit")) == "⏎"
