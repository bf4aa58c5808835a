"""End to end: the real ``opt-tpu-tui`` console script in tmux, CPU backend, a small random OPT.

Types a prompt, sees the reply stream, stops it, quits; then checks what was saved.
The model is big enough (about 5 ms a token here) that a greedy reply is still
streaming when the stop key arrives.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from tiny import make_model

from opt_tpu_tui import paths
from opt_tpu_tui.history import HistoryStore

pytestmark = pytest.mark.skipif(
    shutil.which("tmux") is None or shutil.which("opt-tpu-tui") is None,
    reason="needs tmux and the installed opt-tpu-tui console script",
)


class Tmux:
    def __init__(self, socket: str) -> None:
        self.socket = socket

    def __call__(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.socket, *args], check=True, capture_output=True, text=True).stdout

    def screen(self) -> str:
        return self("capture-pane", "-p", "-t", "e2e")

    def wait_for(self, condition, timeout: float = 60.0) -> str:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if condition(screen):
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; the screen was:\n{screen}")
            time.sleep(0.1)


def test_console_script_streams_stops_and_quits(tmp_path: Path) -> None:
    model = make_model(
        tmp_path / "slow-opt", max_position_embeddings=2048, hidden_size=512, num_hidden_layers=6,
        ffn_dim=2048, num_attention_heads=8,
    )  # fmt: skip
    settings = {"sampling": {"max_new_tokens": 1900, "temperature": 0.0, "repetition_penalty": 1.0}}
    paths.settings_file().parent.mkdir(parents=True)
    paths.settings_file().write_text(json.dumps(settings))
    env = " ".join(f"{k}={os.environ[k]}" for k in ("XDG_CONFIG_HOME", "XDG_DATA_HOME"))
    command = f"env {env} TERM=xterm-256color opt-tpu-tui --model {model} --backend cpu; echo EXIT=$?; sleep 30"
    tmux = Tmux(f"opt-tpu-tui-e2e-{os.getpid()}")
    tmux("new-session", "-d", "-s", "e2e", "-x", "80", "-y", "24", command)
    try:
        tmux.wait_for(lambda s: "· ready ·" in s)
        tmux("send-keys", "-t", "e2e", "-l", "Hello there")
        tmux.wait_for(lambda s: "Hello there" in s)
        tmux("send-keys", "-t", "e2e", "Enter")
        streaming = tmux.wait_for(lambda s: "replying…" in s and s.count("█") >= 2)
        assert "█ Hello there" in streaming
        tmux("send-keys", "-t", "e2e", "Escape")
        stopped = tmux.wait_for(lambda s: "■ stopped" in s and "· ready ·" in s)
        assert "slow-opt on cpu" in stopped
        tmux("send-keys", "-t", "e2e", "C-q")
        tmux.wait_for(lambda s: "EXIT=0" in s, timeout=20)
    finally:
        subprocess.run(["tmux", "-L", tmux.socket, "kill-server"], capture_output=True)

    store, warning = HistoryStore.open()
    assert warning is None
    (turn,) = store.load(store.list_conversations()[0].id)
    assert turn.user == "Hello there" and turn.stopped and turn.assistant
    saved = json.loads(paths.settings_file().read_text())
    assert saved["last_model"] == str(model.resolve())
