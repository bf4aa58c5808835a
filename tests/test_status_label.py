"""The status line's model label at narrow widths (issue 22, item 12, in part): at 100 columns with the pane
beside, the demo marker read "D…". The backend and the marker's words give way before it is cut."""

from __future__ import annotations

import pytest
from tiny import train_tokenizer
from tui_support import make_app, ready, send, shown

from opt_tpu_tui.config import Settings
from opt_tpu_tui.tokenizer import Tokenizer
from opt_tpu_tui.tui.widgets.status import StatusLine

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    return Tokenizer.from_dir(train_tokenizer(tmp_path_factory.mktemp("tok")))


@pytest.mark.parametrize("width", [100, 80])
async def test_the_demo_marker_keeps_its_word_at_100_and_80_columns(tokenizer: Tokenizer, width: int) -> None:
    app, _ = make_app(tokenizer, demo=True, settings=Settings(side_pane="stats"))
    async with app.run_test(size=(width, 30)) as pilot:
        await ready(pilot)
        await send(pilot, "Hello")  # the last reply's figures want their room too
        status = app.screen.query_one(StatusLine)
        status.model = "opt-demo"
        await pilot.pause()
        line = shown(status)
        assert "scripted-opt" not in line  # (the scripted label replaced by a demo-sized one)
        assert "opt-demo" in line and "DEMO" in line and "D…" not in line, line
        assert line.rstrip().endswith("f1 help") and "context " in line and "ready" in line
