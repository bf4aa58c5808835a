"""Snapshots of the main screen at 80x24 and 120x40 (pytest-textual-snapshot).

Deterministic: a scripted backend, a conversation loaded from history (no timing in
it) and fixed device stats. Update after an intended change with
``pytest tests/test_tui_snapshots.py --snapshot-update``.
"""

from __future__ import annotations

from importlib.metadata import version

import pytest
from textual.pilot import Pilot
from tiny import train_tokenizer
from tui_support import make_app, ready, wait_until

from opt_tpu_tui.config import Settings
from opt_tpu_tui.history import HistoryStore
from opt_tpu_tui.tokenizer import Tokenizer
from opt_tpu_tui.tui.screens.main import WIDE
from opt_tpu_tui.tui.widgets.stats import StatsPanel, rows

# The snapshots are Textual 8's. Python 3.8 gets Textual 6.2, which draws the same text but a flat
# Sparkline on the top row of its box (not the bottom) and a focused compact TextArea on another background.
pytestmark = pytest.mark.skipif(
    int(version("textual").split(".")[0]) < 8, reason="the snapshots are Textual 8's; 6.2 differs in two widgets' drawing"
)

TURNS = [
    ("What is the capital of France?", "The capital of France is **Paris**, on the Seine.", False),
    ("And of Italy?", "Rome. It has been the capital since", True),
]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    return Tokenizer.from_dir(train_tokenizer(tmp_path_factory.mktemp("tok")))


def app_with_history(tokenizer: Tokenizer, width: int):  # type: ignore[no-untyped-def]
    store, _ = HistoryStore.open()
    cid = store.create_conversation(TURNS[0][0])
    for user, assistant, stopped in TURNS:
        store.save_reply(store.add_turn(cid, user), assistant, stopped=stopped, complete=True)
    store.close()
    app, _ = make_app(tokenizer, settings=Settings(side_pane="stats"))

    async def before(pilot: Pilot) -> None:
        await ready(pilot)
        await app.screen.open_conversation(cid)
        # under load the terminal's size may reach the screen late: wait for the layout it implies
        await wait_until(pilot, lambda: app.screen.has_class("-narrow") == (width < WIDE))
        if width >= WIDE:  # the stats pane beside the chat (narrower, it is closed and not drawn)
            panel = app.screen.query_one(StatsPanel)
            await wait_until(pilot, lambda: ("Host CPU", "12 %") in rows(panel.view))
        await pilot.pause()

    return app, before


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
def test_main_screen(snap_compare, tokenizer: Tokenizer, size: tuple[int, int]) -> None:  # type: ignore[no-untyped-def]
    app, before = app_with_history(tokenizer, size[0])
    assert snap_compare(app, terminal_size=size, run_before=before)


def test_settings_pane_at_80x24(snap_compare, tokenizer: Tokenizer) -> None:  # type: ignore[no-untyped-def]
    app, before = app_with_history(tokenizer, 80)
    assert snap_compare(app, terminal_size=(80, 24), run_before=before, press=["f2"])
