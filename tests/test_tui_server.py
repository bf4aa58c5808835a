"""The UI with ``--server`` in tmux, against a real ``opt-tpu-tui serve`` on a loopback port: a full chat turn,
regenerate, stop mid-reply, and the stats pane showing the server's figures (read only while it is open).

What is checked is what tmux shows, the history the UI wrote (the test's own XDG dirs) and the
server's request counters on /metrics, never the app's internals.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import tmux
from serve_support import ServeProcess, get
from tiny import SLOW_CONFIG, make_model

from opt_tpu_tui import paths
from opt_tpu_tui.backends import open_model
from opt_tpu_tui.chat import ChatSession
from opt_tpu_tui.history import HistoryStore
from opt_tpu_tui.sampling import SamplingSettings

pytestmark = pytest.mark.skipif(not tmux.available(), reason="needs tmux and the installed opt-tpu-tui console script")
pytest.importorskip("uvicorn", reason="the serve extra (starlette, uvicorn) is not installed")

READY = "· ready ·"
PREAMBLE = "A short test conversation."
MESSAGE = "What is the capital of France?"


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Big enough that a long reply takes seconds (room to stop it midway), small enough to load in a few."""
    return make_model(tmp_path_factory.mktemp("server-ui") / "slow-opt", **SLOW_CONFIG)


@pytest.fixture(scope="module")
def server(model: Path) -> Iterator[ServeProcess]:
    with ServeProcess("--model", str(model)) as process:
        yield process.wait_ready()


def write_settings(**values: object) -> None:
    paths.settings_file().parent.mkdir(parents=True, exist_ok=True)
    paths.settings_file().write_text(json.dumps({"preamble": PREAMBLE, **values}))


def ui(server: ServeProcess, max_new_tokens: int) -> list[str]:
    return [tmux.SCRIPT, "--server", server.url, "--temperature", "0", "--repetition-penalty", "1.0",
            "--max-new-tokens", str(max_new_tokens)]  # fmt: skip


def device_requests(server: ServeProcess) -> float:
    """How many GET /device the server has answered (its request counter on /metrics)."""
    _, text = get(server.url + "/metrics")
    pattern = re.compile(r'^opt_tpu_tui_requests_total\{[^}]*path="/device"[^}]*\} (\S+)$')
    return sum(float(m.group(1)) for line in text.splitlines() if (m := pattern.match(line)))


def saved_turns() -> list[tuple[str, str, bool]]:
    """The turns of the one conversation in the UI's history (none before its first message)."""
    store, _ = HistoryStore.open()
    try:
        conversations = store.list_conversations()
        return [(t.user, t.assistant, t.stopped) for c in conversations for t in store.load(c.id)]
    finally:
        store.close()


def greedy_reply(model: Path, max_new_tokens: int) -> str:
    """What the model answers MESSAGE in-process, greedy: what the server must have streamed."""
    backend, tokenizer = open_model(model, "cpu", None)
    try:
        reply = ChatSession(backend, tokenizer, PREAMBLE).send(
            MESSAGE, SamplingSettings(temperature=0.0, repetition_penalty=1.0, max_new_tokens=max_new_tokens)
        )
        for _ in reply:
            pass
        return reply.turn.assistant
    finally:
        backend.close()


def test_a_chat_turn_and_regenerate_through_the_server_and_its_figures_in_the_stats_pane(
    server: ServeProcess, model: Path
) -> None:
    write_settings(side_pane="stats")
    with tmux.Tmux("server-ui") as term:
        term.start(ui(server, 12), width=120, height=30)
        screen = term.wait_for(lambda s: READY in s and "Connected to the server" in s)
        port = server.url.rsplit(":", 1)[1]
        assert f"cpu @ 127.0.0.1:{port}" in screen  # where the model runs: the server's backend, at its address
        term.wait_for(lambda s: re.search(r"Host mem\s+[\d.]+ \w+ / [\d.]+ \w+", s) is not None)  # the server's figures
        expected = greedy_reply(model, 12)
        term.keys(MESSAGE, literal=True)
        term.keys("Enter")
        term.wait_for(lambda s: READY in s and saved_turns() == [(MESSAGE, expected, False)], timeout=60)
        term.keys("C-r")
        term.wait_for(lambda s: "2/2›" in s and READY in s, timeout=60)  # the second variant of the reply, shown
        assert saved_turns() == [(MESSAGE, expected, False)]  # greedy: the same text again

        asked = device_requests(server)
        assert asked > 0  # the pane is open: its figures come from the server
        term.keys("F3")  # the pane closes: no more requests for figures
        term.wait_for(lambda s: "Host mem" not in s)
        time.sleep(0.2)  # a request already under way when it closed
        closed = device_requests(server)
        time.sleep(2.5)
        assert device_requests(server) == closed
        term.keys("F3")
        term.wait_for(lambda s: "Host mem" in s)
        deadline = time.monotonic() + 10
        while device_requests(server) == closed and time.monotonic() < deadline:
            time.sleep(0.2)
        assert device_requests(server) > closed
        term.keys("C-q")
        term.wait_for(lambda s: "EXIT=0" in s, timeout=20)


def test_escape_stops_a_reply_from_the_server_midway(server: ServeProcess) -> None:
    write_settings(side_pane="hidden")
    with tmux.Tmux("server-stop") as term:
        term.start(ui(server, 900), width=100, height=30)
        term.wait_for(lambda s: READY in s)
        term.keys("Tell me a long story", literal=True)
        term.keys("Enter")
        term.wait_for(lambda s: "replying" in s)
        term.wait_for(lambda s: len(saved_turns()) == 1 and len(saved_turns()[0][1]) > 20, timeout=60)
        term.keys("Escape")
        screen = term.wait_for(lambda s: READY in s and "stopped" in s, timeout=20)
        assert "■ stopped" in screen or "stopped" in screen
        (user, reply, stopped), = saved_turns()
        assert stopped and reply and len(reply) < 900
        # the server is free again at once: a second message gets its reply
        term.keys("Hello", literal=True)
        term.keys("Enter")
        term.wait_for(lambda s: len(saved_turns()) == 2 and READY in s, timeout=60)
        term.keys("C-q")
        term.wait_for(lambda s: "EXIT=0" in s, timeout=20)
