"""The UI with ``--server`` started before its server: it says it cannot connect (not that a model failed to
load), and a message sent once the server is up connects and then replies (issue 23, item 4)."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_server_client import chat_server, fake_server, free_port
from tui_support import finish, submit, wait_until

from opt_tpu_tui.config import Settings
from opt_tpu_tui.history import HistoryStore
from opt_tpu_tui.tui import server_loader
from opt_tpu_tui.tui.app import OptTuiApp
from opt_tpu_tui.tui.widgets.conversation import Notice
from opt_tpu_tui.tui.widgets.status import StatusLine

pytestmark = pytest.mark.anyio


async def test_a_send_connects_to_a_server_started_after_the_ui(tiny_model: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    store, _ = HistoryStore.open()
    app = OptTuiApp(settings=Settings(), store=store, loader=server_loader(url), model_label=url, backend_label="server")
    requests: list[dict] = []
    try:
        async with app.run_test(size=(120, 30)) as pilot:
            await wait_until(pilot, lambda: app.load_error is not None)
            assert app.load_error == (
                f"Cannot connect to the server at {url}: Connection refused (is opt-tpu-tui serve running there?)"
            )
            notices = [str(notice.render()) for notice in app.screen.query(Notice)]
            assert any(app.load_error in text for text in notices) and not any("Model failed" in t for t in notices)
            assert app.screen.query_one(StatusLine).state == "not connected"
            with fake_server(chat_server(tiny_model, requests, die_first=False), port):
                await submit(pilot, "hello")  # connects: the message waits in the prompt meanwhile
                await wait_until(pilot, lambda: app.engine is not None)
                assert app.load_error is None and requests == []
                assert app.screen.query_one("#prompt").text == "hello"
                await wait_until(pilot, lambda: app.screen.query_one(StatusLine).state == "ready")
                await pilot.press("enter")
                await finish(pilot, 1)
            assert [(t.user, t.assistant) for t in app.screen.conversation.turns] == [("hello", "Hi there")]
            assert [m["content"] for m in requests[0]["messages"][1:]] == ["hello"]
    finally:
        store.close()
