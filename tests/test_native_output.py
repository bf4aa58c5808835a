"""What C libraries print to file descriptor 1 goes to a log; the app's own output does not."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from opt_tpu_tui.native_output import native_stdout_to

CHILD = """
import os, sys
from pathlib import Path
from opt_tpu_tui.native_output import native_stdout_to
with native_stdout_to(Path(sys.argv[1])):
    os.write(1, b"[0] do_allreduce: 0.\\n")  # as the simulator's C code does
    print("the reply")  # the app's own output, through sys.stdout
    sys.stdout.flush()
print("after")
"""


def test_c_output_goes_to_the_log_and_the_apps_to_stdout(tmp_path: Path) -> None:
    log = tmp_path / "cache" / "native.log"
    child = subprocess.run([sys.executable, "-c", CHILD, str(log)], capture_output=True, text=True, check=True)
    assert child.stdout == "the reply\nafter\n"
    assert log.read_text() == "[0] do_allreduce: 0.\n"


def test_descriptor_1_is_back_after_the_block_and_left_alone_where_the_log_cannot_be_written(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "native.log"
    with native_stdout_to(log):
        os.write(1, b"inside\n")
    os.write(1, b"after\n")
    assert capfd.readouterr().out == "after\n" and log.read_text() == "inside\n"
    with native_stdout_to(log / "not-a-folder" / "x.log"):
        os.write(1, b"shown\n")
    assert capfd.readouterr().out == "shown\n"


def test_the_log_and_its_folder_are_private_under_umask_022(tmp_path: Path) -> None:
    """C output can quote prompts; an older version left the log 0644, which is tightened too."""
    log = tmp_path / "cache" / "opt-tpu-tui" / "native.log"
    log.parent.mkdir(parents=True, mode=0o755)
    log.write_text("old")
    os.chmod(log, 0o644)
    old = os.umask(0o022)
    try:
        with native_stdout_to(log):
            pass
        with native_stdout_to(tmp_path / "fresh" / "native.log"):
            pass
    finally:
        os.umask(old)
    for path in (log, tmp_path / "fresh" / "native.log"):
        assert (path.stat().st_mode & 0o777, path.parent.stat().st_mode & 0o777) == (0o600, 0o700)


AT_EXIT = """
import atexit, os, sys
atexit.register(os.write, 1, b"BMLIB Send Quit Message\\\\n")  # as the runtime's exit handlers do, after the reply
sys.argv[0] = "opt-tpu-tui"
from opt_tpu_tui.cli import run
run()
"""


def run_script(tiny_model: Path, tmp_path: Path, *args: str, **streams: object) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-c", AT_EXIT, "--model", str(tiny_model), "--temperature", "0", "--max-new-tokens", "8"]
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), "XDG_CONFIG_HOME": str(tmp_path / "config")}
    return subprocess.run([*argv, *args], env=env, text=True, timeout=120, **streams)  # type: ignore[call-overload]


def test_what_native_code_prints_at_exit_goes_to_the_log_not_after_the_reply(tiny_model: Path, tmp_path: Path) -> None:
    child = run_script(tiny_model, tmp_path, "-p", "Hi", "-q", capture_output=True)
    assert child.returncode == 0 and child.stdout.strip() and child.stdout.endswith("\n"), child.stderr
    assert "BMLIB" not in child.stdout
    assert "BMLIB Send Quit Message" in (tmp_path / "cache" / "opt-tpu-tui" / "native-output.log").read_text()


@pytest.mark.parametrize("mode", [["-p", "Hi"], ["-c"]])
def test_the_stats_line_starts_its_own_line_when_stdout_and_stderr_share_a_pipe(
    tiny_model: Path, tmp_path: Path, mode: list[str]
) -> None:
    child = run_script(tiny_model, tmp_path, *mode, input="Hi\n", stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    stats = [line for line in child.stdout.splitlines() if "prompt tokens" in line]
    assert child.returncode == 0 and len(stats) == 1 and stats[0].startswith("["), child.stdout
