"""End to end: the real ``opt-tpu-tui`` console script in tmux, CPU backend, a small random OPT.

Types a prompt, sees the reply stream, stops it, quits; then checks what was saved.
The model is big enough (about 5 ms a token here) that a greedy reply is still
streaming when the stop key arrives.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tmux
from tiny import make_model

from opt_tpu_tui import paths
from opt_tpu_tui.history import HistoryStore

pytestmark = pytest.mark.skipif(not tmux.available(), reason="needs tmux and the installed opt-tpu-tui console script")


def test_console_script_streams_stops_and_quits(tmp_path: Path) -> None:
    model = make_model(
        tmp_path / "slow-opt", max_position_embeddings=2048, hidden_size=512, num_hidden_layers=6,
        ffn_dim=2048, num_attention_heads=8,
    )  # fmt: skip
    settings = {"sampling": {"max_new_tokens": 1900, "temperature": 0.0, "repetition_penalty": 1.0}}
    paths.settings_file().parent.mkdir(parents=True)
    paths.settings_file().write_text(json.dumps(settings))
    with tmux.Tmux("e2e") as term:
        term.start([tmux.SCRIPT, "--model", str(model), "--backend", "cpu"], 80, 24, clipboard=False)
        term.wait_for(lambda s: "· ready ·" in s)
        term.keys("Hello there", literal=True)
        term.wait_for(lambda s: "Hello there" in s)
        term.keys("Enter")
        streaming = term.wait_for(lambda s: "replying…" in s and s.count("█") >= 2)
        assert "█ Hello there" in streaming
        term.keys("Escape")
        stopped = term.wait_for(lambda s: "■ stopped" in s and "· ready ·" in s)
        assert "slow-opt ·" in stopped and "first " in stopped and "tok/s" in stopped  # " on cpu" gives way at 80
        term.keys("C-q")
        term.wait_for(lambda s: "EXIT=0" in s, timeout=20)

    store, warning = HistoryStore.open()
    assert warning is None
    (turn,) = store.load(store.list_conversations()[0].id)
    assert turn.user == "Hello there" and turn.stopped and turn.assistant
    saved = json.loads(paths.settings_file().read_text())
    assert saved["last_model"] == str(model.resolve())
