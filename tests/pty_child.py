"""A program on a pseudo-terminal, driven as a user would: bytes in as keys, what it prints read back."""

from __future__ import annotations

import errno
import fcntl
import os
import pty
import select
import signal
import struct
import termios
import time
from pathlib import Path

TIMEOUT = 90.0  # seconds: generous, for a loaded 2-core machine
UP, CTRL_C, CTRL_D = b"\x1b[A", b"\x03", b"\x04"


class PtyChild:
    """The app on a pseudo-terminal: send bytes as keys, wait for text in what it prints."""

    def __init__(self, argv: list[str], env: dict[str, str], size: tuple[int, int] = (120, 30)) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: the pty is its controlling terminal, so ctrl+c is SIGINT
            try:
                # As a shell starts a foreground job: SIGINT and SIGQUIT at their defaults. A test
                # run started in the background by a script inherits them ignored, and an ignored
                # disposition survives exec (Python then leaves ctrl+c ignored: -c's tests failed so)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                signal.signal(signal.SIGQUIT, signal.SIG_DFL)
                os.execve(argv[0], argv, env)
            finally:
                os._exit(127)
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", size[1], size[0], 0, 0))
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
