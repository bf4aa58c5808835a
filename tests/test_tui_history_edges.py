"""Issue 22's edges of the prompt and the history in the real app (Pilot, scripted backend): ctrl+u clears a
whole logical line, the search lists a regenerated message once, and the list names the model that replied."""

from __future__ import annotations

import pytest
from textual.widgets import OptionList
from tiny import train_tokenizer
from tui_support import finish, make_app, ready, send, shown, wait_until

from opt_tpu_tui.config import Settings
from opt_tpu_tui.sampling import SamplingSettings
from opt_tpu_tui.tokenizer import Tokenizer
from opt_tpu_tui.tui.screens.conversations import ConversationsScreen
from opt_tpu_tui.tui.screens.search import SearchScreen
from opt_tpu_tui.tui.widgets.prompt import PromptInput

pytestmark = pytest.mark.anyio

GREEDY = Settings(sampling=SamplingSettings(temperature=0.0, repetition_penalty=1.0, max_new_tokens=200))


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    return Tokenizer.from_dir(train_tokenizer(tmp_path_factory.mktemp("tok")))


async def test_ctrl_u_clears_a_long_wrapped_paste_in_one_press(tokenizer: Tokenizer) -> None:
    app, _ = make_app(tokenizer, settings=GREEDY)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        prompt = app.screen.query_one(PromptInput)
        prompt.focus()
        paste = "".join(f"word{i} " for i in range(300))  # 2,000+ characters on one line: ~27 wrapped rows
        prompt.insert(paste)
        await pilot.pause()
        assert prompt.wrapped_document.height > 20  # it does wrap, so a per-row ctrl+u would leave most of it
        await pilot.press("ctrl+u")
        assert prompt.text == ""


async def test_ctrl_u_clears_to_the_start_of_the_logical_line_only(tokenizer: Tokenizer) -> None:
    app, _ = make_app(tokenizer, settings=GREEDY)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        prompt = app.screen.query_one(PromptInput)
        prompt.focus()
        prompt.insert("first line\n" + "x" * 300 + " tail")
        prompt.cursor_location = (1, 300)  # before " tail", several wrapped rows into line 2
        await pilot.press("ctrl+u")
        assert prompt.text == "first line\n tail" and prompt.cursor_location == (1, 0)
        await pilot.press("ctrl+u")  # at the start of a line: the break before it goes, as TextArea does
        assert prompt.text == "first line tail" and prompt.cursor_location == (0, 10)
        await pilot.press("ctrl+u")
        assert prompt.text == " tail"
        await pilot.press("ctrl+u")  # at the very start: nothing to delete
        assert prompt.text == " tail"


async def test_after_ctrl_r_the_search_lists_the_message_once(tokenizer: Tokenizer) -> None:
    app, _ = make_app(tokenizer, settings=GREEDY)
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        await send(pilot, "Tell me about zebras")
        await pilot.press("ctrl+r")
        await finish(pilot, 2)
        await pilot.press("ctrl+f")
        await wait_until(pilot, lambda: isinstance(app.screen, SearchScreen))
        await pilot.press(*"zebras")
        await wait_until(pilot, lambda: app.screen.searched == "zebras")
        listed = shown(app.screen.query_one("#search-results"))
        assert [(hit.turn, hit.field) for hit in app.screen.hits] == [(None, "title"), (0, "user")]
        assert listed.count("turn 1 · you") == 1


async def test_the_conversation_list_and_the_export_name_the_model_that_replied(
    tokenizer: Tokenizer, capsys: pytest.CaptureFixture[str]
) -> None:
    from opt_tpu_tui import cli

    app, _ = make_app(tokenizer, settings=GREEDY)
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        await send(pilot, "Tell me about zebras")
        await pilot.press("ctrl+o")
        await wait_until(pilot, lambda: isinstance(app.screen, ConversationsScreen))
        await pilot.pause()
        assert "scripted-opt" in shown(app.screen.query_one(OptionList))
    cid = app.store.list_conversations()[0].id
    app.store.close()
    assert cli.main(["export", str(cid), "-o", "-"]) == 0
    assert "**Model (scripted-opt):**" in capsys.readouterr().out


async def test_history_deleted_while_the_app_runs_the_conversation_is_saved_again_whole(tokenizer: Tokenizer) -> None:
    from opt_tpu_tui import paths
    from opt_tpu_tui.history import HistoryStore

    app, _ = make_app(tokenizer, settings=GREEDY)
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        await send(pilot, "first")
        for found in paths.data_dir().glob("history.sqlite3*"):  # rm history.sqlite3*
            found.unlink()
        await send(pilot, "second")
        said = [n.message for n in app._notifications]
        assert any("history file was removed" in line and "new conversation" in line for line in said), said
    app.store.close()
    store, _ = HistoryStore.open()  # the file at the path now, as the next start reads it
    (summary,) = store.list_conversations()
    assert [t.user for t in store.load(summary.id)] == ["first", "second"]
    store.close()
