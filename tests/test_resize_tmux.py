"""The real app in tmux: after the window was too small, or started too small, typing and Enter reach the
prompt (issue 22, item 2). Checked on what tmux shows and on the history the app writes."""

from __future__ import annotations

from pathlib import Path

import pytest
import tmux
from test_tui_tmux import PLACEHOLDER, READY, quit_app, saved_user_messages, sent, tui, write_settings
from tiny import make_model

pytestmark = pytest.mark.skipif(not tmux.available(), reason="needs tmux and the installed opt-tpu-tui console script")


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model(tmp_path_factory.mktemp("tmux") / "tiny-opt")


@pytest.mark.parametrize("started_small", [False, True], ids=["shrunk-and-grown", "started-small"])
def test_a_burst_after_the_window_was_too_small_is_sent_once(chat_model: Path, started_small: bool) -> None:
    write_settings()
    with tmux.Tmux("refocus") as term:
        if started_small:
            term.start(tui(chat_model), 40, 12)
        else:
            term.start(tui(chat_model), 100, 30)
            term.wait_for(lambda s: READY in s)
            term.resize(40, 12)
        term.wait_for(lambda s: "too small" in s.lower())
        term.resize(100, 30)
        term.wait_for(lambda s: READY in s and PLACEHOLDER in s and "Send" in s)
        term.keys("the quick brown fox jumps", "Enter")  # one burst, Enter included
        sent(term, "the quick brown fox jumps")
        quit_app(term)
    assert saved_user_messages() == ["the quick brown fox jumps"]
