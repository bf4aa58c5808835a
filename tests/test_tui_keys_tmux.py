"""ctrl+c and ctrl+z in the real app, in tmux (opt_tpu_tui/tui/screens/main.py, app.py).

ctrl+c mid-reply stops the reply as escape does and the app goes on; ctrl+z suspends the
app to the shell (SIGTSTP) and ``fg`` brings it back, drawn and taking keys. Before, both
did nothing in the UI (ctrl+z was the prompt's undo).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import tmux
from test_signals import MESSAGE, READY, SCRIPTED_APP, SLOW, open_markers, reply_under_way, saved_turns

pytestmark = pytest.mark.skipif(not tmux.available(), reason="needs tmux")

STOPPED = "■ stopped"


def test_ctrl_c_mid_reply_stops_it_and_the_app_goes_on() -> None:
    with tmux.Tmux("ctrl-c") as term:
        term.start([sys.executable, str(SCRIPTED_APP), *SLOW], 80, 24)
        reply_under_way(term)
        term.keys("C-c")
        term.wait_for(lambda s: STOPPED in s and READY in s, timeout=30)
        (reply, stopped, complete), = saved_turns()
        assert (stopped, complete) == (1, 1) and "Hello world" in reply
        term.keys("C-q")
        assert "EXIT=0" in term.wait_for(lambda s: "EXIT=" in s, timeout=30)
    assert open_markers() == []


def test_ctrl_z_suspends_to_the_shell_and_fg_brings_the_app_back(tmp_path: Path) -> None:
    with tmux.Tmux("ctrl-z") as term:
        term.start(["bash", "--norc", "--noprofile", "-i"], 80, 24)
        term.keys(f"cd {tmp_path}; PS1='$ '; {sys.executable} {SCRIPTED_APP} --tokens 40", "Enter")
        term.wait_for(lambda s: READY in s)
        term.keys("C-z")
        term.wait_for(lambda s: "Stopped" in s and READY not in s, timeout=30)  # bash's job line, on the shell's screen
        term.keys("fg", "Enter")
        term.wait_for(lambda s: READY in s, timeout=30)  # redrawn
        term.keys(MESSAGE, "Enter")  # and taking keys
        term.wait_for(lambda s: MESSAGE in s and "Hello world" in s and READY in s, timeout=30)
        term.keys("C-q")
        term.wait_for(lambda s: READY not in s and s.rstrip().endswith("$"), timeout=30)
        term.keys("echo EXIT=$?", "Enter")
        assert "EXIT=0" in term.wait_for(lambda s: "EXIT=0" in s or "EXIT=1" in s, timeout=10)
