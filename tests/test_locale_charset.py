"""LANG=C and LC_ALL=C mean an ASCII terminal, though Python switches to UTF-8 there (issue 22, item 8).

The charset comes from the locale environment (LC_ALL, else LC_CTYPE, else LANG), with
the LC_CTYPE that Python's own C-locale coercion puts there passed over. Checked on a
pty: every byte the app writes under LANG=C or LC_ALL=C is ASCII.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest
import tmux
from hostile import VISIBLE, make_hostile_model
from pty_child import PtyChild

from opt_tpu_tui.plain_text import locale_charset

CTRL_Q = b"\x11"
needs_script = pytest.mark.skipif(not tmux.available(), reason="needs the installed opt-tpu-tui console script")


@pytest.mark.parametrize(
    "environ, utf8_mode, charset",
    [
        ({"LANG": "C", "LC_CTYPE": "C.UTF-8"}, True, "ascii"),  # LANG=C as Python leaves it after coercion
        ({"LC_ALL": "C"}, True, "ascii"),
        ({"LC_ALL": "POSIX", "LANG": "en_US.UTF-8"}, True, "ascii"),  # LC_ALL wins
        ({"LC_ALL": "C.UTF-8", "LANG": "C"}, False, "utf-8"),
        ({"LC_CTYPE": "C.UTF-8"}, False, "utf-8"),  # set by the user: UTF-8 mode is off then
        ({"LANG": "de_DE.ISO-8859-1", "LC_CTYPE": "C.UTF-8"}, True, "ascii"),  # a locale not installed is C
        ({"LANG": "de_DE.ISO-8859-1"}, False, "iso8859-1"),
        ({"LANG": "sr_RS.UTF-8@latin"}, False, "utf-8"),
        ({"LANG": "en_US"}, False, None),  # no codeset named: the stream's encoding is trusted
        ({}, False, None),  # nothing set: a stripped environment
    ],
)
def test_the_charset_is_the_locales(environ: dict[str, str], utf8_mode: bool, charset: str | None) -> None:
    assert locale_charset(environ, utf8_mode) == charset


def c_locale(variable: str) -> dict[str, str]:
    """The test's environment with only ``variable``=C as its locale."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LC_", "LANG", "PYTHONIOENCODING", "PYTHONUTF8"))}
    return {**env, **tmux.app_env({variable: "C"})}


@pytest.fixture(scope="module")
def hostile_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_hostile_model(tmp_path_factory.mktemp("locale") / "hostile-opt")


def run_on_pty(argv: list[str], env: dict[str, str], ui: bool) -> bytes:
    child = PtyChild(argv, env, size=(100, 30))
    try:
        if ui:
            child.expect("ready")
            child.send(b"hi")
            time.sleep(0.3)
            child.send(b"\r")
            child.expect(VISIBLE)  # the reply's last words
            child.send(CTRL_Q)
        assert child.exit_code() == 0, child.output[-2000:]
        return child.output
    finally:
        child.close()


@needs_script
@pytest.mark.parametrize("variable", ["LANG", "LC_ALL"])
def test_prompt_mode_writes_only_ascii_in_the_c_locale(hostile_model: Path, variable: str) -> None:
    argv = [tmux.SCRIPT, "-p", "hi", "--model", str(hostile_model), "--backend", "cpu", "--temperature", "0"]
    output = run_on_pty(argv, c_locale(variable), ui=False)
    assert max(output) < 0x80, sorted({b for b in output if b >= 0x80})[:10]
    assert VISIBLE in output.decode("ascii") and "?]0;" in output.decode("ascii")  # ␛ as its stand-in


@needs_script
@pytest.mark.parametrize("variable", ["LANG", "LC_ALL"])
def test_the_ui_draws_only_ascii_in_the_c_locale(hostile_model: Path, variable: str) -> None:
    argv = [tmux.SCRIPT, "--model", str(hostile_model), "--backend", "cpu", "--temperature", "0"]
    output = run_on_pty(argv, c_locale(variable), ui=True)
    assert max(output) < 0x80, sorted({b for b in output if b >= 0x80})[:10]
    text = re.sub(rb"\x1b\[[0-9;?]*[A-Za-z]", b"", output).decode("ascii")
    assert "Send" in text and VISIBLE in text
