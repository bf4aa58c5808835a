"""The wheel on the box's Python: a fresh Python 3.8 venv outside the tree, its packages from the registry.

A BM1684X box runs Ubuntu 20.04, whose python3 is 3.8 (Sophgo's sail wheels are built
for it). This installs the wheel there with the dependency versions pip picks for 3.8
(textual 6.2, numpy 1.24, ...), runs ``opt-tpu-tui -p`` on the built-in demo model and
drives the real UI headless (Textual's Pilot) to the same greedy reply.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from pythons import pyenv_python

ROOT = Path(__file__).resolve().parents[1]
PYTHON38_ENV = "OPT_TPU_TUI_PYTHON38"  # .ci/run sets it; else pyenv's newest 3.8 or python3.8 on PATH
GREEDY = ["--temperature", "0", "--max-new-tokens", "24"]

PILOT = textwrap.dedent(
    """
    import asyncio, sys, time
    from opt_tpu_tui.config import Settings
    from opt_tpu_tui.demo import DEMO_MODEL_DIR
    from opt_tpu_tui.history import HistoryStore
    from opt_tpu_tui.sampling import SamplingSettings
    from opt_tpu_tui.tui import model_loader
    from opt_tpu_tui.tui.app import OptTuiApp

    async def wait(pilot, condition) -> None:
        deadline = time.monotonic() + 60
        while not condition():
            if time.monotonic() > deadline:
                raise SystemExit(f"timed out; load error: {pilot.app.load_error}")
            await pilot.pause(0.05)

    async def chat() -> str:
        store, _ = HistoryStore.open()
        settings = Settings(sampling=SamplingSettings(temperature=0, max_new_tokens=24))
        app = OptTuiApp(settings=settings, store=store, loader=model_loader(DEMO_MODEL_DIR, "cpu", None),
                        model_label="demo", backend_label="cpu", demo=True, warnings=[])
        async with app.run_test(size=(100, 30)) as pilot:
            await wait(pilot, lambda: getattr(app.screen, "session", None) is not None)
            app.screen.query_one("#prompt").focus()
            await pilot.press(*"Hello", "enter")
            await wait(pilot, lambda: app.screen.finished_replies >= 1)
            reply = app.screen.session.turns[-1].assistant
        store.close()
        return reply

    print(sys.version_info[:2], file=sys.stderr)
    print(asyncio.run(chat()))
    """
)


def python38() -> str | None:
    """The Python 3.8 interpreter to install into, or None where there is none."""
    return pyenv_python("3.8", PYTHON38_ENV)


@pytest.mark.slow
def test_the_wheel_installs_and_chats_on_python_3_8(tmp_path: Path) -> None:
    interpreter = python38()
    if interpreter is None:
        pytest.skip(f"no Python 3.8 here (set {PYTHON38_ENV}, or install it with pyenv)")
    source = tmp_path / "source"  # a copy: building in the tree would leave build/ behind
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", ".venv*", "build", "dist", "*.egg-info", "__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(source)],
        check=True, capture_output=True,
    )  # fmt: skip
    wheel = next(tmp_path.glob("opt_tpu_tui-*.whl"))
    venv = tmp_path / "venv38"
    subprocess.run([interpreter, "-m", "venv", str(venv)], check=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(XDG_CONFIG_HOME=str(tmp_path / "config"), XDG_DATA_HOME=str(tmp_path / "data"), XDG_CACHE_HOME=str(tmp_path / "cache"))
    install = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(wheel)], capture_output=True, text=True, env=env)
    assert install.returncode == 0, install.stderr[-3000:]
    versions = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import sys, numpy, textual; print(sys.version_info[:2], numpy.__version__, textual.__version__)"],
        capture_output=True, text=True, check=True, env=env,
    ).stdout.split()  # fmt: skip
    assert versions[:2] == ["(3,", "8)"] and versions[2].startswith("1.24.") and versions[3].startswith("6.2."), versions

    printed = subprocess.run(
        [str(venv / "bin" / "opt-tpu-tui"), "-p", "Hello", *GREEDY], cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env
    )  # fmt: skip
    assert printed.returncode == 0, printed.stderr
    assert "built-in demo model" in printed.stderr
    headless = subprocess.run(
        [str(venv / "bin" / "python"), "-c", PILOT], cwd=tmp_path, capture_output=True, text=True, timeout=180, env=env
    )  # fmt: skip
    assert headless.returncode == 0, headless.stderr[-3000:]
    assert headless.stdout.strip() == printed.stdout.strip() != ""
