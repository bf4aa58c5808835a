"""Where the full-screen UI cannot work it says so in one line and exits 2, naming -p and -c (opt_tpu_tui/tui/__init__.py).

Before: on a stdin at its end (``< /dev/null``) it drew the UI and spun a core forever;
with every stream redirected it wrote escape codes into the files and hung; ``TERM=dumb``
got the full-screen UI; under ``ulimit -n 9`` it ended in an asyncio traceback. Each case
runs the console script as a user would, on a pseudo-terminal where one is wanted.
"""

from __future__ import annotations

import subprocess

import pytest
import tmux
from pty_child import PtyChild

pytestmark = pytest.mark.skipif(not tmux.available(), reason="needs the installed opt-tpu-tui console script")

ESCAPE = "\x1b"


def one_error_line(output: str) -> str:
    """The single line the app printed (CR LF from the pty taken as a line end), checked to be a plain error."""
    lines = [line for line in output.replace("\r\n", "\n").split("\n") if line]
    assert len(lines) == 1, output
    assert lines[0].startswith("opt-tpu-tui: error: ") and ESCAPE not in lines[0], output
    return lines[0]


def on_a_pty(shell_command: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run ``opt-tpu-tui`` through ``sh -c shell_command`` (``$APP`` is the script) on a pty; its exit code and output."""
    child = PtyChild(["/bin/sh", "-c", shell_command], {**tmux.app_env(env), "APP": tmux.SCRIPT}, size=(100, 30))
    try:
        return child.exit_code(), child.output.decode(errors="replace")
    finally:
        child.close()


@pytest.mark.parametrize(
    "command, named",
    [
        ('exec "$APP" < /dev/null', "stdin is not one"),
        ('exec "$APP" > out.txt', "stdout is not one"),
        ('exec "$APP" 2> err.txt', None),  # the line went to the file: checked below
    ],
)
def test_the_ui_refuses_to_start_without_a_terminal(command: str, named: str | None, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)
    code, output = on_a_pty(command)
    if named is None:
        output = (tmp_path / "err.txt").read_text()
        named = "stderr is not one"
    assert code == 2
    line = one_error_line(output)
    assert named in line and "-p" in line and "-c" in line


def test_the_ui_with_every_stream_redirected_refuses_at_once() -> None:
    result = subprocess.run(
        [tmux.SCRIPT], stdin=subprocess.DEVNULL, capture_output=True, text=True, env=tmux.app_env(), timeout=60
    )
    assert result.returncode == 2 and result.stdout == ""
    line = one_error_line(result.stderr)
    assert "stdin is not one" in line and "-p" in line and "-c" in line


def test_the_ui_refuses_term_dumb() -> None:
    code, output = on_a_pty('exec "$APP"', {"TERM": "dumb"})
    assert code == 2
    line = one_error_line(output)
    assert "TERM=dumb" in line and "-p" in line and "-c" in line


def test_too_few_open_files_is_one_line() -> None:
    code, output = on_a_pty('ulimit -n 9 && exec "$APP"')
    assert code == 2
    line = one_error_line(output)
    assert "ulimit -n" in line


def test_a_low_soft_limit_is_raised_for_the_ui(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """``ulimit -Sn 9`` with a higher hard limit: the UI raises its own soft limit and starts."""
    with tmux.Tmux("fds") as term:
        term.start(["sh", "-c", f"ulimit -Sn 9 && exec {tmux.SCRIPT}"], 100, 30)
        term.wait_for(lambda s: "ready" in s or "EXIT=" in s, timeout=60)
        term.keys("C-q")
        assert "EXIT=0" in term.wait_for(lambda s: "EXIT=" in s, timeout=30)
