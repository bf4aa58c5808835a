"""Driving the real ``opt-tpu-tui`` console script in a private tmux server (end-to-end tests).

tmux is a real terminal emulator: what it shows in ``capture-pane`` is what a user over
SSH sees, and it keeps the state that escape sequences change (the pane title, paste
buffers filled by OSC 52), so tests can check both the screen and what an app's output
did to the terminal. Each ``Tmux`` runs its own server (``-L`` socket), killed on exit.

The command starts only once the test has set the terminal up (``start`` gates it on a
``tmux wait-for`` channel), so an escape sequence emitted at startup cannot race the
test's baseline (title, buffers).
"""

from __future__ import annotations

import itertools
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType

import opt_tpu_tui

KNOWN_TITLE = "known-title"
_serial = itertools.count()


def tree_under_test() -> Path:
    """The source tree whose ``opt_tpu_tui`` this test process imported (PYTHONPATH wins over the editable install).

    The console script is run with it first on PYTHONPATH, so ``PYTHONPATH=/work/main pytest``
    and a plain run from a worktree test the same code in-process and in the terminal.
    """
    return Path(opt_tpu_tui.__file__).resolve().parents[1]


def app_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Variables the app under test gets: the test's XDG dirs (see conftest), the tree under test, xterm-256color."""
    env = {k: os.environ[k] for k in ("XDG_CONFIG_HOME", "XDG_DATA_HOME")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(tree_under_test()), os.environ.get("PYTHONPATH", "")) if p)
    env["TERM"] = "xterm-256color"
    env.update(extra or {})
    return env


SCRIPT = str(Path(sys.executable).parent / "opt-tpu-tui")  # installed beside this python, on PATH or not (.venv/bin)


def available() -> bool:
    return shutil.which("tmux") is not None and Path(SCRIPT).exists()


class Tmux:
    """One private tmux server holding one session (``self.target``); use as a context manager."""

    def __init__(self, name: str, session: str = "e2e") -> None:
        self.socket = f"opt-tpu-tui-{name}-{os.getpid()}-{next(_serial)}"
        self.target = session

    def __call__(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.socket, *args], check=True, capture_output=True, text=True).stdout

    def __enter__(self) -> Tmux:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.kill()

    def kill(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True)

    def start(
        self, argv: list[str], width: int = 80, height: int = 24, env: Mapping[str, str] | None = None, clipboard: bool = True
    ) -> None:
        """Run ``argv`` (with ``app_env``) in a ``width`` x ``height`` pane titled KNOWN_TITLE.

        With ``clipboard``, tmux accepts OSC 52 from the pane (``set-clipboard on``), so an
        escape that writes the clipboard would show as a new paste buffer. After the
        command exits the pane prints ``EXIT=<code>`` and stays open.
        """
        variables = " ".join(f"{k}={shlex.quote(v)}" for k, v in app_env(env).items())
        gate = f"go-{self.socket}"
        command = (
            f"tmux -L {self.socket} wait-for {gate}; env {variables} {shlex.join(argv)}; echo EXIT=$?; sleep 120"
        )
        self("new-session", "-d", "-s", self.target, "-x", str(width), "-y", str(height), command)
        if clipboard:
            self("set-option", "-g", "set-clipboard", "on")
        self("select-pane", "-t", self.target, "-T", KNOWN_TITLE)
        self("wait-for", "-S", gate)

    def keys(self, *keys: str, literal: bool = False) -> None:
        """One ``send-keys`` call: the keys reach the app as one burst, as typed-ahead keys do over SSH."""
        self("send-keys", "-t", self.target, *(["-l"] if literal else []), *keys)

    def screen(self) -> str:
        return self("capture-pane", "-p", "-t", self.target)

    def lines(self) -> list[str]:
        """Every row of the pane, blank ones included (capture-pane prints them all)."""
        return self.screen().split("\n")[: self.size()[1]]

    def size(self) -> tuple[int, int]:
        width, height = self("display-message", "-p", "-t", self.target, "#{pane_width} #{pane_height}").split()
        return int(width), int(height)

    def resize(self, width: int, height: int) -> None:
        self("resize-window", "-t", self.target, "-x", str(width), "-y", str(height))

    def title(self) -> str:
        return self("display-message", "-p", "-t", self.target, "#{pane_title}").rstrip("\n")

    def buffers(self) -> str:
        """tmux's paste buffers (empty on a fresh server); OSC 52 from the pane adds one."""
        return self("list-buffers")

    def wait_for(self, condition: Callable[[str], bool], timeout: float = 60.0) -> str:
        """Poll the screen until ``condition(screen)`` holds; the screen is in the failure message."""
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if condition(screen):
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; the screen was:\n{screen}")
            time.sleep(0.1)

    def wait_for_lines(self, condition: Callable[[list[str]], bool], timeout: float = 60.0) -> list[str]:
        """As ``wait_for``, on the rows of the pane (for checks on where things are)."""
        found: list[str] = []

        def check(_: str) -> bool:
            found[:] = self.lines()
            return condition(found)

        self.wait_for(check, timeout)
        return found
