"""SIGHUP and SIGTERM mid-reply end the app as ctrl+q does (opt_tpu_tui/signals.py), in a real terminal.

A closed terminal, an SSH disconnect and ``tmux kill-session`` send SIGHUP; ``kill`` sends
SIGTERM. The app runs over a scripted backend that streams slowly (tests/scripted_app.py)
in tmux or on a pty; the signal comes while the reply is on screen. Afterwards the history
on disk must hold at least what the screen showed, as a finished turn marked stopped, with
no open marker left behind; and after SIGTERM the terminal must be as it was before.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import termios
import time
from pathlib import Path

import psutil
import pytest
import tmux
from pty_child import PtyChild

from opt_tpu_tui import paths

pytestmark = pytest.mark.skipif(not tmux.available(), reason="needs tmux")

SCRIPTED_APP = Path(__file__).parent / "scripted_app.py"
MESSAGE = "Tell me a story"
READY = "· ready ·"
SLOW = ["--tokens", "3000", "--rate", "40"]  # a reply of minutes, a few words a second


def scripted_app(term: tmux.Tmux) -> psutil.Process:
    """The scripted app's process in ``term``'s pane (a child of the pane's shell)."""
    shell = psutil.Process(int(term("display-message", "-p", "-t", term.target, "#{pane_pid}")))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = [p for p in shell.children(recursive=True) if str(SCRIPTED_APP) in " ".join(command_line(p))]
        if found:
            return found[0]
        time.sleep(0.1)
    raise AssertionError("the scripted app did not start")


def command_line(process: psutil.Process) -> list[str]:
    """``process``'s command line; none for one that has ended meanwhile (a child of the shell listed, then
    gone or a zombie: under load the lookup raised, and the test failed before the app had started)."""
    try:
        return process.cmdline()
    except psutil.NoSuchProcess:  # ZombieProcess is one too
        return []


def ended(app: psutil.Process, timeout: float = 30) -> None:
    """Wait for the app to end; one that has not by ``timeout`` is killed and fails the test (left running, the
    app of a failing case spun a core for the rest of the session)."""
    try:
        app.wait(timeout=timeout)
    except psutil.TimeoutExpired:
        app.kill()
        raise AssertionError(f"the app did not end within {timeout} s of the signal (killed)") from None


def words(text: str) -> str:
    return " ".join(text.split())


def reply_on_screen(screen: str) -> str:
    """The reply's text as the screen shows it: the rows after the message, without the bar, as words."""
    lines = screen.split("\n")
    start = next(i for i, line in enumerate(lines) if MESSAGE in line) + 1
    end = next(i for i, line in enumerate(lines) if line.startswith("───"))
    return words(" ".join(line.replace("█", "", 1) for line in lines[start:end]))


def saved_turns() -> list[tuple[str, int, int]]:
    """(reply, stopped, complete) of every turn on disk, read without opening the history as the app does."""
    db = sqlite3.connect(f"file:{paths.history_file()}?mode=ro", uri=True)
    try:
        return db.execute("SELECT assistant, stopped, complete FROM turns ORDER BY id").fetchall()
    finally:
        db.close()


def open_markers() -> list[Path]:
    history = paths.history_file()
    return list(history.parent.glob(f"{history.name}.open-*"))


def check_saved(shown: str) -> None:
    """The one turn on disk holds what was ``shown`` (and maybe a few tokens more), finished and stopped; no marker."""
    (reply, stopped, complete), = saved_turns()
    assert words(reply).startswith(shown), f"saved {reply!r}\nshown {shown!r}"
    assert (stopped, complete) == (1, 1)
    assert open_markers() == []


def reply_under_way(term: tmux.Tmux) -> str:
    """Send MESSAGE, wait until its reply shows a few words, and return the screen as the signal will find it."""
    term.wait_for(lambda s: READY in s)
    term.keys(MESSAGE, "Enter")
    term.wait_for(lambda s: MESSAGE in s and "Hello world" in s)
    return reply_on_screen(term.screen())


@pytest.mark.parametrize("how", ["kill-session", "kill -TERM"])
def test_a_signal_mid_reply_saves_what_was_shown_as_stopped(how: str) -> None:
    with tmux.Tmux("signal") as term:
        term.start([sys.executable, str(SCRIPTED_APP), *SLOW], 80, 24)
        app = scripted_app(term)
        shown = reply_under_way(term)
        if how == "kill-session":
            term("kill-session", "-t", term.target)
        else:
            app.terminate()
        ended(app)
        if how == "kill -TERM":  # the pane's shell outlives the app: its exit code, and the terminal
            screen = term.wait_for(lambda s: "EXIT=" in s, timeout=10)
            assert "EXIT=143" in screen  # 128 + SIGTERM's 15 (signals.py)
            assert READY not in screen  # back on the main screen: what was there before the app
    check_saved(shown)


def test_sigterm_restores_the_terminal_and_exits_143(tmp_path: Path) -> None:
    """On a pty: after SIGTERM the app leaves the alternate screen, turns mouse reporting off, shows the cursor
    and puts the terminal back in cooked mode; the reply is saved as in tmux."""
    child = PtyChild([sys.executable, str(SCRIPTED_APP), *SLOW], tmux.app_env(), size=(80, 24))
    try:
        child.expect("ready")
        terminal = os.readlink(f"/proc/{child.pid}/fd/0")  # the pty's child side, to read its modes
        child.send(MESSAGE.encode() + b"\r")
        child.expect("Hello")
        assert not local_modes(terminal) & (termios.ICANON | termios.ECHO)  # the app's raw mode, as the signal finds it
        mark = len(child.output)
        os.kill(child.pid, 15)
        assert child.exit_code() == 143
        at_exit = child.output[mark:].decode(errors="replace")
        for restore in ("\x1b[?1049l", "\x1b[?25h", "\x1b[?1000l", "\x1b[?1006l"):  # alt screen, cursor, mouse
            assert restore in at_exit, f"{restore!r} not written at exit"
        assert local_modes(terminal) & termios.ICANON and local_modes(terminal) & termios.ECHO  # cooked again
    finally:
        child.close()
    (reply, stopped, complete), = saved_turns()
    assert (stopped, complete) == (1, 1) and "Hello" in reply
    assert open_markers() == []


def local_modes(terminal: str) -> int:
    """The terminal's local modes (ICANON, ECHO...), read through its device as any process on it could."""
    descriptor = os.open(terminal, os.O_RDWR | os.O_NOCTTY)
    try:
        return termios.tcgetattr(descriptor)[3]
    finally:
        os.close(descriptor)


def test_a_terminal_lost_with_sighup_ignored_still_ends_the_app_cleanly() -> None:
    """Started with SIGHUP ignored (``nohup``, ``trap '' HUP``), the app keeps it ignored; when the terminal
    goes, its reads and writes fail (EIO) and that ends the app as the hangup would have (driver.py),
    not in a panic, nor blocked on writes that cannot happen."""
    with tmux.Tmux("lost") as term:
        command = f"trap '' HUP; exec {sys.executable} {SCRIPTED_APP} {' '.join(SLOW)}"
        term.start(["sh", "-c", command], 80, 24)
        app = scripted_app(term)
        shown = reply_under_way(term)
        term("kill-session", "-t", term.target)
        ended(app)
    check_saved(shown)
