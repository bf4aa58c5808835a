"""``-c`` on a real pseudo-terminal: readline history, commands, ctrl+c and ctrl+d, multi-line messages.

The child is the console script (tests/line_child.py) with the built-in demo model;
keys reach it as a user's would, through the pty. What the model was sent is read from
the child's log of ChatSession.send, not guessed from the echo.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import pty
import select
import struct
import sys
import termios
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHILD = Path(__file__).with_name("line_child.py")
TIMEOUT = 90.0  # seconds: generous, for a loaded 2-core machine
UP, CTRL_C, CTRL_D = b"\x1b[A", b"\x03", b"\x04"
FAST = ["--temperature", "0", "--max-new-tokens", "4"]


class PtyChild:
    """The app on a pseudo-terminal: send bytes as keys, wait for text in what it prints."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: the pty is its controlling terminal, so ctrl+c is SIGINT
            try:
                os.execve(sys.executable, [sys.executable, str(CHILD), *args], env)
            finally:
                os._exit(127)
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 120, 0, 0))
        self.output = b""
        self.seen = 0  # what ``expect`` has matched up to
        self.status: int | None = None

    def send(self, keys: bytes) -> None:
        os.write(self.fd, keys)

    def read(self, timeout: float) -> bool:
        """Read what is there within ``timeout``; False once the child's side is closed."""
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return True
        try:
            data = os.read(self.fd, 65536)
        except OSError as error:
            if error.errno == errno.EIO:
                return False
            raise
        self.output += data
        return bool(data)

    def expect(self, text: str) -> str:
        """Wait for ``text`` after the last match; returns what came before it."""
        wanted = text.encode()
        deadline = time.monotonic() + TIMEOUT
        while wanted not in self.output[self.seen :]:
            if time.monotonic() > deadline or not self.read(0.2):
                raise AssertionError(f"{text!r} never came; the child printed:\n{self.output.decode(errors='replace')}")
        start = self.output.index(wanted, self.seen)
        before, self.seen = self.output[self.seen : start], start + len(wanted)
        return before.decode(errors="replace")

    def wait_until_reading(self) -> None:
        """Wait until the child is blocked reading the terminal, so that a ctrl+c sent now is seen at once.

        CPython's readline looks at signals only when its select() is interrupted: a
        ctrl+c in the instant between drawing the prompt and calling select() waits for
        the next key. No person hits that instant; a test sending ctrl+c the moment the
        prompt shows can. (Linux's /proc tells where the child sleeps; elsewhere, no wait.)
        """
        wchan = Path(f"/proc/{self.pid}/wchan")
        deadline = time.monotonic() + TIMEOUT
        while wchan.exists() and not any(word in wchan.read_text() for word in ("select", "poll")):
            if time.monotonic() > deadline:
                raise AssertionError(f"the child never waited for input; it printed:\n{self.output.decode()}")
            self.read(0.01)

    def exchange(self, keys: bytes) -> str:
        """Send ``keys`` that end a message, wait for the whole reply and the next prompt; returns the reply."""
        self.send(keys)
        self.expect("bot> ")
        return self.expect("you> ")

    def leave(self) -> None:
        """ctrl+d at the prompt, and the child exits cleanly."""
        self.send(CTRL_D)
        assert self.exit_code() == 0

    def running(self) -> bool:
        pid, status = os.waitpid(self.pid, os.WNOHANG)
        if pid:
            self.status = status
        return not pid

    def exit_code(self) -> int:
        """Wait for the child to end (reading what it still prints) and return its exit code."""
        deadline = time.monotonic() + TIMEOUT
        while self.status is None and self.running():
            if time.monotonic() > deadline:
                raise AssertionError(f"the child did not exit; it printed:\n{self.output.decode(errors='replace')}")
            self.read(0.1)
        assert self.status is not None
        if os.WIFEXITED(self.status):  # (3.8 has no os.waitstatus_to_exitcode)
            return os.WEXITSTATUS(self.status)
        return -os.WTERMSIG(self.status)

    def close(self) -> None:
        if self.status is None and self.running():
            os.kill(self.pid, 9)
            os.waitpid(self.pid, 0)
        os.close(self.fd)


@pytest.fixture
def app(tmp_path: Path):  # noqa: ANN201 - a function starting PtyChild
    """Start the app on a pty with its own settings and data folders; the sent messages go to ``sent``."""
    children: list[PtyChild] = []

    def start(*args: str, slow: float | None = None) -> PtyChild:
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
        child = PtyChild(list(args), env)
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
