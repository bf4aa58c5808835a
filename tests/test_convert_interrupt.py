"""What an interrupted ``opt-tpu-tui convert`` leaves beside ``--out``: nothing it does not name."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import tmux
from test_converted import fake_toolchain  # noqa: F401 - the fixture, shared

from opt_tpu_tui.convert.build import convert


def building(tmp_path: Path) -> list[Path]:
    return sorted(tmp_path.glob("out.converting-*"))


@pytest.mark.skipif(not tmux.available(), reason="needs the installed opt-tpu-tui script")
def test_ctrl_c_during_convert_removes_its_build_folder_and_says_so(
    simulator: None, tiny_model: Path, tmp_path: Path
) -> None:
    """ctrl+c as a terminal sends it: SIGINT to the whole process group, tpuc-opt included, mid-compile."""
    out = tmp_path / "out"
    argv = [tmux.SCRIPT, "convert", "--model", str(tiny_model), "--out", str(out), "--mode", "f16", "--context", "32"]
    child = subprocess.Popen(
        argv, env={**os.environ, **tmux.app_env()}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not any(folder.glob("build/*.compile.log") for folder in building(tmp_path)):  # a compile runs
            assert child.poll() is None and time.monotonic() < deadline, child.stderr.read().decode()  # type: ignore[union-attr]
            time.sleep(0.02)
        staging = building(tmp_path)[0]
        os.killpg(child.pid, signal.SIGINT)
        _, err = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
    text = err.decode(errors="replace")
    assert child.returncode == 130, text
    assert "Traceback" not in text and text.splitlines()[-1] == f"interrupted: removed {staging}"
    assert list(tmp_path.iterdir()) == [], sorted(map(str, tmp_path.rglob("*")))


def test_an_interrupt_in_a_compile_removes_the_build_folder_logs_and_all(
    tiny_model: Path, tmp_path: Path, fake_toolchain: dict, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    from opt_tpu_tui import toolchain

    def interrupted(top_mlir: Path, mode: str, group_size: int = 0, scratch: Path | None = None, **_: object) -> Path:
        (top_mlir.parent / f"{top_mlir.stem}.compile.log").write_text("$ tpuc-opt ...\n")
        raise KeyboardInterrupt

    monkeypatch.setattr(toolchain, "compile_top", interrupted)
    said: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        convert(tiny_model, tmp_path / "out", "f16", context=32, log=said.append)
    assert list(tmp_path.iterdir()) == [] and said[-1].startswith(f"interrupted: removed {tmp_path / 'out'}.converting-")


def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_a_build_folder_left_by_a_killed_conversion_is_removed_by_the_next_and_named(
    tiny_model: Path, tmp_path: Path, fake_toolchain: dict  # noqa: F811
) -> None:
    out = tmp_path / "out"
    killed = tmp_path / f"out.converting-{dead_pid()}-0123abcd"
    running = tmp_path / f"out.converting-{os.getpid()}-89abcdef"  # another convert into out, still going
    unknown = tmp_path / "out.converting-0badc0de"  # named by an earlier version: whose it is cannot be told
    other = tmp_path / f"other.converting-{dead_pid()}-0123abcd"  # a conversion into another folder
    for folder in (killed, running, unknown, other):
        (folder / "build").mkdir(parents=True)
        (folder / "build" / "lm_head.compile.log").write_text("...")
    said: list[str] = []
    convert(tiny_model, out, "f16", context=32, log=said.append)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out", running.name, unknown.name, other.name])
    assert f"removed {killed}, left by a conversion that did not finish" in said
    assert f"note: {unknown} may be left from an interrupted conversion; remove it if no convert is running" in said
