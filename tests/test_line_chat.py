"""``-c`` on a real pseudo-terminal: readline history, commands, ctrl+c and ctrl+d, multi-line messages.

The child is the console script (tests/line_child.py) with the built-in demo model;
keys reach it as a user's would, through the pty. What the model was sent is read from
the child's log of ChatSession.send, not guessed from the echo.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from pty_child import CTRL_C, CTRL_D, UP, PtyChild

ROOT = Path(__file__).resolve().parents[1]
CHILD = Path(__file__).with_name("line_child.py")
FAST = ["--temperature", "0", "--max-new-tokens", "4"]


@pytest.fixture
def app(tmp_path: Path):  # noqa: ANN201 - a function starting PtyChild
    """Start the app on a pty with its own settings and data folders; the sent messages go to ``sent``."""
    children: list[PtyChild] = []

    def start(*args: str, slow: float | None = None, size: tuple[int, int] = (120, 30)) -> PtyChild:
        env = {
            **os.environ,
            "XDG_CONFIG_HOME": str(tmp_path / "config"),
            "XDG_DATA_HOME": str(tmp_path / "data"),
            "XDG_CACHE_HOME": str(tmp_path / "cache"),
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
            "TERM": "xterm",
            "INPUTRC": os.devnull,  # the user's readline settings stay out of the test
            "LINE_CHILD_SENT": str(tmp_path / "sent.jsonl"),
        }
        env.pop("LINE_CHILD_SLOW", None)
        if slow is not None:
            env["LINE_CHILD_SLOW"] = str(slow)
        child = PtyChild([sys.executable, str(CHILD), *args], env, size)
        children.append(child)
        return child

    yield start
    for child in children:
        child.close()


def chat_at_prompt(app) -> PtyChild:  # noqa: ANN001 - the app fixture
    """``-c`` on the demo model, quick greedy replies, no stats, waiting at its first prompt."""
    chat = app("-c", "-q", *FAST)
    chat.expect("you> ")
    return chat


def type_on_two_lines(chat: PtyChild, first: bytes, second: bytes) -> None:
    """Type ``first``, continue it with a trailing backslash, end the message with ``second``."""
    chat.send(first + b"\\\r")
    chat.expect("...> ")
    chat.exchange(second + b"\r")


def sent(tmp_path: Path) -> list[str]:
    """The messages the model was sent, in order."""
    log = tmp_path / "sent.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_up_arrow_recalls_the_previous_message(app, tmp_path: Path) -> None:
    chat = chat_at_prompt(app)
    chat.exchange(b"Hello there\r")
    chat.send(UP)
    chat.expect("Hello there")  # readline shows the recalled line for editing
    chat.exchange(b"\r")
    chat.leave()
    assert sent(tmp_path) == ["Hello there", "Hello there"]


def test_help_lists_the_commands_and_an_unknown_one_is_refused(app, tmp_path: Path) -> None:
    chat = chat_at_prompt(app)
    chat.send(b"/help\r")
    listing = chat.expect("you> ")
    for command in ("/new", "/regen", "/help", "/quit", "//"):
        assert command in listing
    assert 80 < max(map(len, listing.splitlines())) < 120  # wrapped at the pty's 120 columns
    chat.send(b"/frobnicate now\r")
    chat.expect("unknown command /frobnicate")
    chat.expect("you> ")
    chat.exchange(b"//etc/passwd is a file\r")
    chat.send(b"/quit\r")
    assert chat.exit_code() == 0
    assert sent(tmp_path) == ["/etc/passwd is a file"]


def test_ctrl_c_at_the_prompt_asks_and_a_second_in_a_row_leaves(app, tmp_path: Path) -> None:
    chat = chat_at_prompt(app)
    chat.send(b"half a line")
    chat.expect("half a line")
    chat.wait_until_reading()
    chat.send(CTRL_C)
    chat.expect("ctrl+c again leaves")
    chat.expect("you> ")
    assert chat.running()
    chat.exchange(b"Hi\r")  # a message in between: the next ctrl+c asks again
    chat.wait_until_reading()
    chat.send(CTRL_C)
    chat.expect("ctrl+c again leaves")
    chat.expect("you> ")
    assert chat.running()
    chat.wait_until_reading()
    chat.send(CTRL_C)
    assert chat.exit_code() == 0
    assert sent(tmp_path) == ["Hi"]  # the line ctrl+c dropped was never sent


def test_ctrl_d_leaves(app) -> None:
    chat = chat_at_prompt(app)
    chat.leave()


def test_ctrl_c_during_a_reply_stops_it(app, tmp_path: Path) -> None:
    chat = app("-c", "--max-new-tokens", "4096", slow=0.1)
    chat.expect("you> ")
    chat.send(b"Tell me everything\r")
    chat.expect("bot> ")
    chat.send(CTRL_C)
    chat.expect("[stopped]")
    stats = chat.expect("you> ")
    assert "stop: stopped]" in stats, stats
    assert chat.running()  # stopping a reply does not leave
    chat.leave()


def test_a_trailing_backslash_continues_the_message(app, tmp_path: Path) -> None:
    chat = chat_at_prompt(app)
    type_on_two_lines(chat, b"first line ", b"second line")
    chat.leave()
    assert sent(tmp_path) == ["first line \nsecond line"]


def test_lines_pasted_in_one_go_are_one_message(app, tmp_path: Path) -> None:
    chat = chat_at_prompt(app)
    chat.exchange(b"def f(x):\r    return x \\\r\rf(2)\r")  # a backslash inside a paste is text
    chat.leave()
    assert sent(tmp_path) == ["def f(x):\n    return x \\\n\nf(2)"]


def test_prompt_from_a_terminal_says_it_reads_stdin(app) -> None:
    child = app("-p", "-", "-q", *FAST)
    child.expect("reading the prompt from stdin until ctrl+d")
    child.send(b"Hello\r" + CTRL_D)
    assert child.exit_code() == 0


def test_messages_typed_are_recalled_in_a_later_session_from_a_private_file(app, tmp_path: Path) -> None:
    first = chat_at_prompt(app)
    type_on_two_lines(first, b"two ", b"lines")
    first.leave()

    history = tmp_path / "data" / "opt-tpu-tui" / "line-history.jsonl"
    assert history.stat().st_mode & 0o777 == 0o600 and history.parent.stat().st_mode & 0o777 == 0o700
    second = chat_at_prompt(app)
    second.exchange(UP + b"\r")
    second.leave()
    assert sent(tmp_path) == ["two \nlines", "two \nlines"]  # one entry, though typed on two lines


@pytest.mark.parametrize("width", [60, 80])
def test_help_is_wrapped_at_the_terminal_width_between_words(width: int) -> None:
    from opt_tpu_tui.line_chat import help_text

    text = help_text(Path("/home/u/.local/share/opt-tpu-tui/line-history"), width)
    lines = text.splitlines()
    assert all(len(line) < width for line in lines if "line-history" not in line), lines
    assert " ".join(text.split()).count("ctrl+c again leaves") == 1  # a phrase is never lost in the wrapping
    assert all(not line.startswith(" them") for line in lines)


def test_the_opening_lines_are_wrapped_between_words_on_a_narrow_terminal(app) -> None:  # noqa: ANN001
    """The terminal's own wrap broke them mid-word ("Pyt" / "hon docs") at 60 and 80 columns."""
    chat = app("-c", *FAST, size=(60, 30))
    opening = chat.expect("you> ")
    lines = [line for line in opening.replace("\r", "").splitlines() if line.strip()]
    assert all(len(line) < 60 for line in lines), lines
    words = " ".join(opening.split())
    assert "trained on the Python docs" in words and "/help lists the commands" in words
    chat.send(b"/quit\r")
    assert chat.exit_code() == 0
