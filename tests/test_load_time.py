"""How long the model takes to load is shown (issue 22, item 24): a ticking count while it loads, the time after
(in the UI and on -p's stats line), so loading cannot be taken for hanging."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import pytest
from tiny import train_tokenizer
from tui_support import make_app, ready, shown, wait_until

from opt_tpu_tui import cli
from opt_tpu_tui.tokenizer import Tokenizer
from opt_tpu_tui.tui.widgets.conversation import Notice
from opt_tpu_tui.tui.widgets.status import StatusLine

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    return Tokenizer.from_dir(train_tokenizer(tmp_path_factory.mktemp("tok")))


async def test_the_ui_counts_the_seconds_of_a_load_and_says_how_long_it_took(tokenizer: Tokenizer) -> None:
    go_on = threading.Event()
    app, backend = make_app(tokenizer)

    def slow_loader():  # type: ignore[no-untyped-def]
        go_on.wait(30)
        return backend, tokenizer

    app.loader = slow_loader
    async with app.run_test(size=(100, 30)) as pilot:
        status = app.screen.query_one(StatusLine)
        try:
            await wait_until(pilot, lambda: "loading model… 2 s" in shown(status), timeout=10)  # it ticks
        finally:
            go_on.set()
        await ready(pilot)
        await wait_until(pilot, lambda: "ready" in shown(status))
        notices = [str(notice.render()) for notice in app.screen.query(Notice)]
        loaded = [float(m.group(1)) for text in notices for m in [re.search(r"Model loaded in (\d+\.\d) s", text)] if m]
        assert len(loaded) == 1 and 2.0 <= loaded[0] < 30


def test_prompt_mode_stats_say_how_long_the_model_took_to_load(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tiny_model: Path
) -> None:
    open_model = cli.open_model

    def slow_open(*args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        time.sleep(0.5)
        return open_model(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(cli, "open_model", slow_open)
    code = cli.main(["--model", str(tiny_model), "-p", "Hello", "--max-new-tokens", "4", "--temperature", "0"])
    err = capsys.readouterr().err
    found = re.search(r"\[model loaded in (\d+\.\d) s, \d+ prompt tokens", err)
    assert code == 0 and found and float(found.group(1)) >= 0.5, err
