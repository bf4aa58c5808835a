"""``-c`` ended by SIGTERM or SIGHUP (opt_tpu_tui/signals.py, line_chat.py), on a pseudo-terminal.

Mid-reply the reply stops between two tokens as ctrl+c stops it (marked ``[stopped]``,
so whatever ``-c`` keeps of it is complete) and then ``-c`` leaves; at the prompt it
leaves at once, with readline's terminal modes undone. The exit code is 128 + the
signal's number. Before, the process died where it stood, in readline's raw mode.
"""

from __future__ import annotations

import os
import signal
import termios

import pytest
from pty_child import PtyChild
from test_line_chat import app  # noqa: F401 - the fixture starting -c on a pty

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="POSIX signals")


def local_modes(child: PtyChild) -> int:
    """The pty's local modes (ICANON, ECHO...), as the child's side sees them."""
    return termios.tcgetattr(child.fd)[3]


def cooked(child: PtyChild) -> bool:
    modes = local_modes(child)
    return bool(modes & termios.ICANON and modes & termios.ECHO)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_mid_reply_stops_it_then_leaves(app, signum: int) -> None:  # noqa: F811
    chat = app("-c", "--max-new-tokens", "4096", slow=0.1)
    chat.expect("you> ")
    chat.send(b"Tell me everything\r")
    chat.expect("bot> ")
    chat.read(0.5)  # a few words of the reply
    os.kill(chat.pid, signum)
    assert chat.exit_code() == 128 + signum
    if signum == signal.SIGTERM:  # (after SIGHUP what is still written goes nowhere: the terminal hung up)
        after = chat.output[chat.seen :].decode(errors="replace")
        assert "[stopped]" in after, after
    assert cooked(chat)


def test_sigterm_at_the_prompt_leaves_with_the_terminal_cooked(app) -> None:  # noqa: F811
    chat = app("-c", "-q")
    chat.expect("you> ")
    chat.wait_until_reading()
    assert not local_modes(chat) & termios.ICANON  # readline's own mode while it reads
    os.kill(chat.pid, signal.SIGTERM)
    assert chat.exit_code() == 143
    assert cooked(chat)


def test_help_states_the_exit_codes_after_a_signal() -> None:
    from opt_tpu_tui.cli import build_parser

    text = " ".join(build_parser().format_help().split())
    assert "SIGHUP and SIGTERM" in text and "129, 143" in text
