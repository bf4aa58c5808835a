"""A real ``opt-tpu-tui serve`` in a child process on a loopback port, for the serve tests and bench/serve.py.

The server is started with ``--port 0`` and says the port it got on stderr; every wait
is bounded, and the child is stopped by its own pid.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
START_SECONDS = 120.0


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a child opt-tpu-tui: this tree's package first, settings in the test's own dirs."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.pop(KEY_VARIABLE, None)
    env.update(extra or {})
    return env


KEY_VARIABLE = "OPT_TPU_TUI_API_KEY"


class ServeProcess:
    """``opt-tpu-tui serve ARGS --port 0``; ``url`` once it said where it listens, ``wait_ready`` for /health 200."""

    def __init__(self, *args: str, env: dict[str, str] | None = None, host: str = "127.0.0.1") -> None:
        command = [sys.executable, "-m", "opt_tpu_tui", "serve", "--port", "0", "--host", host, *args]
        self.child = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=child_env(env),
            text=True,
        )  # fmt: skip
        self.lines: list[str] = []
        self._said = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.host = host
        self.port = 0

    def _read(self) -> None:
        assert self.child.stderr is not None
        for line in self.child.stderr:
            with self._said:
                self.lines.append(line.rstrip("\n"))
                self._said.notify_all()
        with self._said:
            self._said.notify_all()

    def wait_for_line(self, text: str, timeout: float = START_SECONDS) -> str:
        deadline = time.monotonic() + timeout
        with self._said:
            while True:
                found = next((line for line in self.lines if text in line), None)
                if found is not None:
                    return found
                if self.child.poll() is not None and not self._reader.is_alive():
                    raise AssertionError(f"the server exited ({self.child.returncode}): {self.stderr}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {text!r} from the server within {timeout} s: {self.stderr}")
                self._said.wait(min(left, 0.5))

    @property
    def stderr(self) -> str:
        return "\n".join(self.lines)

    @property
    def url(self) -> str:
        if not self.port:
            line = self.wait_for_line("listening on http://")
            self.port = int(line.split("listening on http://", 1)[1].split()[0].rsplit(":", 1)[1])
        return f"http://{self.host}:{self.port}"

    def wait_ready(self, timeout: float = START_SECONDS) -> ServeProcess:
        self.wait_for_line("ready:", timeout)
        status, _ = get(self.url + "/health")
        assert status == 200
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.child.poll() is None:
            self.child.send_signal(sig)
        try:
            code = self.child.wait(timeout)
        except subprocess.TimeoutExpired:
            self.child.kill()
            self.child.wait(10)
            raise AssertionError(f"the server did not stop within {timeout} s after signal {sig}") from None
        self._reader.join(10)
        return code

    def __enter__(self) -> ServeProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.child.poll() is None:
            self.child.kill()
            self.child.wait(10)


def request(
    url: str, body: Any = None, headers: dict[str, str] | None = None, data: bytes | None = None, timeout: float = 60
) -> tuple[int, Any, Any]:  # fmt: skip
    """(status, parsed JSON or text, headers: case-insensitive) of a GET (no body) or POST."""
    if body is not None:
        data = json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            status, raw, got = response.status, response.read(), response.headers
    except urllib.error.HTTPError as error:
        status, raw, got = error.code, error.read(), error.headers
    text = raw.decode("utf-8")
    try:
        return status, json.loads(text), got
    except ValueError:
        return status, text, got


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    status, body, _ = request(url, headers=headers)
    return status, body


def metric(url: str, name: str, headers: dict[str, str] | None = None) -> float:
    """The value of the unlabelled sample ``name`` on /metrics."""
    _, text = get(url + "/metrics", headers)
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no {name} on /metrics")
