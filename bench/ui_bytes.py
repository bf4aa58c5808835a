"""Terminal bytes the app writes while it streams and while it sits idle (what an SSH link carries).

The real app (OptTuiApp over a scripted backend: tests/scripted_app.py) runs in a child
process on a pseudo-terminal, TERM=xterm-256color, COLORTERM unset; this process counts every
byte it reads from the pty master. The child reports each token the backend produces
on a pipe (timestamps on the shared monotonic clock), so bytes can be put against
tokens without looking inside the app. Keys reach the app as a user's would, through
the pty.

For each rate and size it prints bytes per token over the first and the last 200
tokens and their ratio (the view must not get dearer as the reply grows), bytes/s and
the app's CPU share of one core over the stream, and idle bytes/s over IDLE_WINDOW
seconds from IDLE_AFTER seconds after the reply's last token, first with no side pane
(the run streams with it hidden), then after F3 shows the stats pane. Each is run twice:
the app, and as reference the same app writing every update as Textual makes it,
without the copy of the screen that lets the app write only what changed and scroll
in the terminal (tui/terminal_copy.py).

pyte (a dev dependency) reads the screen to know when the app is ready.

    python bench/ui_bytes.py [--tokens 2000] [--rates 20,200] [--sizes 80x24,120x40]
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import select
import struct
import subprocess
import sys
import tempfile
import termios
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyte

ROOT = Path(__file__).resolve().parents[1]
SCRIPTED_APP = ROOT / "tests" / "scripted_app.py"
IDLE_AFTER = 2.0  # seconds after the last token before idle is measured (the final render is done by then)
IDLE_WINDOW = 3.0
WINDOW = 200  # tokens in the first/last window
F3 = b"\x1bOR"  # xterm's F3
CTRL_Q = b"\x11"
GOALS = {"bytes_per_token_80x24": 200, "last_over_first": 1.15, "idle_no_pane": 0.0}


@dataclass
class Run:
    master: int
    progress: int
    process: subprocess.Popen[bytes]
    writes: list[tuple[float, int]] = field(default_factory=list)  # (monotonic time, bytes read)
    token_times: dict[int, float] = field(default_factory=dict)  # script step (1 = first token) -> time
    screen: pyte.Screen = field(default_factory=lambda: pyte.Screen(80, 24))
    unread: bytearray = field(default_factory=bytearray)  # output not yet fed to ``screen``
    cpu: dict[int, float] = field(default_factory=dict)  # script step -> the app's CPU seconds (user + system) then
    _pending: bytes = b""

    def pump(self, seconds: float) -> None:
        """Read the pty and the progress pipe for ``seconds``."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([self.master, self.progress], [], [], left)
            now = time.monotonic()
            if self.master in ready:
                try:
                    data = os.read(self.master, 65536)
                except OSError:
                    data = b""
                if data:
                    self.writes.append((now, len(data)))
                    self.unread += data
            if self.progress in ready:
                data = os.read(self.progress, 65536)
                self._pending += data
                *lines, self._pending = self._pending.split(b"\n")
                for line in lines:
                    step, stamp = line.split()
                    self.token_times[int(step)] = float(stamp)
                    self.cpu[int(step)] = cpu_seconds(self.process.pid)

    def until(self, condition, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise SystemExit(f"timed out waiting for {what}; the screen showed:\n" + "\n".join(self.screen.display))
            self.pump(0.05)

    def shows(self, text: str) -> bool:
        """Whether the screen shows ``text`` (the app writes only the cells that change, so the
        bytes need not hold it whole). Fed only when asked: never while the reply streams."""
        stream = pyte.ByteStream(self.screen)
        stream.feed(bytes(self.unread))
        self.unread.clear()
        return any(text in line for line in self.screen.display)

    def bytes_between(self, start: float, end: float) -> int:
        return sum(n for t, n in self.writes if start <= t < end)


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of process ``pid`` so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(tokens: int, rate: float, cols: int, rows: int, textual_writes: bool = False) -> dict[str, float]:
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    progress_read, progress_write = os.pipe()
    home = Path(tempfile.mkdtemp(prefix="ui-bytes-"))
    env = {k: v for k, v in os.environ.items() if k not in ("COLORTERM", "TEXTUAL", "NO_COLOR")}
    env.update(TERM="xterm-256color", XDG_CONFIG_HOME=str(home / "config"), XDG_DATA_HOME=str(home / "data"))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH", ""), str(ROOT)) if p)
    process = subprocess.Popen(
        [sys.executable, str(SCRIPTED_APP), "--tokens", str(tokens), "--rate", str(rate), "--progress", str(progress_write),
         *(["--textual-writes"] if textual_writes else [])],
        stdin=slave, stdout=slave, stderr=slave, env=env, pass_fds=(progress_write,), start_new_session=True,
        preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
    )  # fmt: skip
    os.close(slave)
    os.close(progress_write)
    run = Run(master, progress_read, process, screen=pyte.Screen(cols, rows))
    try:
        run.until(lambda: run.shows("ready"), 60, "the model to load")
        run.pump(0.5)
        os.write(master, b"Tell me a long story")
        run.until(lambda: run.shows("a long story"), 10, "the typed prompt to show")
        os.write(master, b"\r")
        run.until(lambda: tokens + 1 in run.token_times, tokens / rate * 3 + 60, "the reply to end")
        end = run.token_times[tokens + 1]  # the EOS step: the reply's text is all out
        run.pump(end + IDLE_AFTER + IDLE_WINDOW - time.monotonic())
        idle_hidden = run.bytes_between(end + IDLE_AFTER, end + IDLE_AFTER + IDLE_WINDOW) / IDLE_WINDOW
        os.write(master, F3)
        shown = time.monotonic()
        run.pump(IDLE_AFTER + IDLE_WINDOW)
        idle_stats = run.bytes_between(shown + IDLE_AFTER, shown + IDLE_AFTER + IDLE_WINDOW) / IDLE_WINDOW
        os.write(master, CTRL_Q)
        deadline = time.monotonic() + 10
        while process.poll() is None and time.monotonic() < deadline:
            run.pump(0.1)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        os.close(master)
        os.close(progress_read)
    t = run.token_times
    first = run.bytes_between(t[1], t[1 + WINDOW]) / WINDOW
    last = run.bytes_between(t[tokens + 1 - WINDOW], t[tokens + 1]) / WINDOW
    stream_seconds = end - t[1]
    return {
        "first": first,
        "last": last,
        "ratio": last / first if first else float("inf"),
        "stream_bytes_per_s": run.bytes_between(t[1], end) / stream_seconds,
        "rate": tokens / stream_seconds,
        "cpu_share": (run.cpu[tokens + 1] - run.cpu[1]) / stream_seconds,
        "idle_hidden": idle_hidden,
        "idle_stats": idle_stats,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=2000)
    parser.add_argument("--rates", default="20,200", help="tokens per second from the scripted backend")
    parser.add_argument("--sizes", default="80x24,120x40", help="terminal sizes, COLSxROWS")
    parser.add_argument("--json", action="store_true", help="also print the figures as JSON lines")
    args = parser.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    print(f"Terminal bytes, {args.tokens} tokens, xterm-256color; idle from {IDLE_AFTER:.0f} s after the reply, over {IDLE_WINDOW:.0f} s")
    print("goals: ≤200 B/token at 80x24 · last/first ≤1.15 · idle 0 B/s with no pane open")
    print("reference: the same app writing each update as Textual makes it (no terminal copy: tui/terminal_copy.py)")
    print()
    print("| size | tok/s asked (got) | writes | B/token first 200 | B/token last 200 | last/first | B/s streaming "
          "| app CPU streaming | idle B/s, no pane | idle B/s, stats pane |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for cols, rows in sizes:
        for rate in rates:
            for textual_writes in (False, True):
                r = measure(args.tokens, rate, cols, rows, textual_writes)
                goal = " (goal ≤200)" if (cols, rows) == (80, 24) and not textual_writes else ""
                ratio_goal = "" if textual_writes else " (goal ≤1.15)"
                print(
                    f"| {cols}x{rows} | {rate:.0f} ({r['rate']:.0f}) | {'Textual (reference)' if textual_writes else 'app'} "
                    f"| {r['first']:.0f}{goal} | {r['last']:.0f}{goal} | {r['ratio']:.2f}{ratio_goal} "
                    f"| {r['stream_bytes_per_s']:.0f} | {r['cpu_share']:.0%} | {r['idle_hidden']:.0f} | {r['idle_stats']:.0f} |",
                    flush=True,
                )
                if args.json:
                    print(json.dumps({"size": f"{cols}x{rows}", "rate": rate, "textual_writes": textual_writes, **r}), flush=True)


if __name__ == "__main__":
    main()
