"""The real app driven by Pilot over a scripted backend: send, stream, stop, regenerate, settings,
history, themes, layout and error handling."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import pyte
import pytest
from rich.cells import cell_len
from rich.console import Console
from textual.binding import Binding
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Input, Markdown
from textual.widgets._toast import Toast
from scripted import GreedyScriptedBackend
from tiny import train_tokenizer
from tui_support import REPLY, finish, make_app, ready, script_ids, send, shown, submit, wait_until

from opt_tpu_tui import paths
from opt_tpu_tui.config import Settings, load_settings
from opt_tpu_tui.errors import UserError
from opt_tpu_tui.export import clipboard_file
from opt_tpu_tui.history import HistoryStore
from opt_tpu_tui.sampling import SamplingSettings
from opt_tpu_tui.tokenizer import Tokenizer
from opt_tpu_tui.tui.screens.help import HelpScreen
from opt_tpu_tui.tui.app import OptTuiApp
from opt_tpu_tui.tui.compositor import DrawnCompositor
from opt_tpu_tui.tui.screens.main import MainScreen
from opt_tpu_tui.tui.screens.search import SearchScreen
from opt_tpu_tui.tui.widgets.conversation import Notice, ReplyRows, ReplyView, Transcript, UserMessage, take_line
from opt_tpu_tui.tui.widgets.prompt import PromptInput
from opt_tpu_tui.tui.widgets.settings_form import SettingsForm
from opt_tpu_tui.tui.widgets.stats import StatsPanel, rows
from opt_tpu_tui.tui.widgets.status import StatusLine

pytestmark = pytest.mark.anyio

def long_reply_app(tokenizer: Tokenizer, repeats: int):  # type: ignore[no-untyped-def]
    """An app whose greedy reply is REPLY ``repeats`` times, at 100 tokens/s: long enough to stop or quit mid-way."""
    settings = Settings(sampling=SamplingSettings(temperature=0.0, repetition_penalty=1.0, max_new_tokens=4096))
    return make_app(tokenizer, script=script_ids(tokenizer, REPLY * repeats, eos=False), delay=0.01, settings=settings)


GREEDY = Settings(sampling=SamplingSettings(temperature=0.0, repetition_penalty=1.0, max_new_tokens=200))


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    return Tokenizer.from_dir(train_tokenizer(tmp_path_factory.mktemp("tok")))


def replies(app) -> list[ReplyView]:  # type: ignore[no-untyped-def]
    return list(app.screen.query(ReplyView))


async def test_send_streams_reply_and_saves_it(tokenizer: Tokenizer) -> None:
    app, backend = make_app(tokenizer, settings=GREEDY, delay=0.04)
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        prompt = app.screen.query_one("#prompt")
        prompt.insert("Hi there")
        await pilot.press("enter")
        await wait_until(pilot, lambda: app.screen.streaming)
        # text shows up while the reply is still streaming
        await wait_until(pilot, lambda: not app.screen.streaming or bool(replies(app)[-1].text))
        assert app.screen.streaming, "the reply should still be streaming when its first text is on screen"
        await finish(pilot, 1)
        assert [m.render().plain for m in app.screen.query(UserMessage)] == ["Hi there"]
        assert replies(app)[-1].text == REPLY
        assert prompt.text == ""
        assert backend.prefills[0][-3:] == tokenizer.encode("\nAssistant:", add_bos=False)[-3:]
    conversations = app.store.list_conversations()
    assert [c.turns for c in conversations] == [1]
    assert app.store.load(conversations[0].id)[0].assistant == REPLY


async def test_stats_show_the_prompt_tokens_the_next_turn_kept_in_the_cache(tokenizer: Tokenizer) -> None:
    app, backend = make_app(tokenizer, settings=GREEDY)
    async with app.run_test(size=(120, 40)) as pilot:
        await ready(pilot)
        panel = app.screen.query_one(StatsPanel)
        await send(pilot, "Hi there")
        assert dict(rows(panel.view))["Prefill"].endswith(" ms")
        await send(pilot, "And again")
        first, second = backend.prefills
        assert second[: len(first)] == first and backend.reused > len(first)  # the prompt and part of the reply
        assert dict(rows(panel.view))["Prefill"].endswith(f" ms ({backend.reused} cached)")


async def test_ctrl_j_inserts_newline_and_enter_sends_both_lines(tokenizer: Tokenizer) -> None:
    app, _ = make_app(tokenizer, settings=GREEDY)
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        await pilot.press("a", "ctrl+j", "b")
        assert app.screen.query_one("#prompt").text == "a\nb"
        await pilot.press("enter")
        await finish(pilot, 1)
        assert app.screen.conversation.turns[0].user == "a\nb"


async def test_stop_keeps_partial_reply_marked_and_answers_within_a_token(tokenizer: Tokenizer) -> None:
    app, backend = long_reply_app(tokenizer, 20)
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        app.screen.query_one("#prompt").insert("Tell me a long story")
        await pilot.press("enter")
        await wait_until(pilot, lambda: app.screen.streaming)
        backend.cancel = app.screen.in_flight.cancel
        await wait_until(pilot, lambda: len(replies(app)[-1].text) > 20)
        await pilot.press("escape")
        await finish(pilot, 1)
        view = replies(app)[-1]
        turn = app.screen.conversation.turns[-1]
        assert turn.stopped and view.stopped
        assert "■ stopped" in shown(view)
        assert 0 < len(turn.assistant) < len((REPLY * 20).strip())
        assert view.text == turn.assistant
        assert backend.decodes_after_cancel <= 1
    saved = app.store.load(app.store.list_conversations()[0].id)[0]
    assert saved.stopped and saved.assistant == turn.assistant


async def test_regenerate_replaces_the_last_reply(tokenizer: Tokenizer) -> None:
    app, backend = make_app(tokenizer, settings=GREEDY)
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        await send(pilot, "Question one")
        await pilot.press("ctrl+r")
        await finish(pilot, 2)
        assert backend.prefills[0] == backend.prefills[1]
        assert len(replies(app)) == 1 and len(app.screen.query(UserMessage)) == 1
        assert replies(app)[0].text == REPLY
        assert len(app.screen.conversation.turns) == 1
    conversation = app.store.list_conversations()[0]
    assert conversation.turns == 1


def users(app) -> list[str]:  # type: ignore[no-untyped-def]
    """The user messages on the chat screen (under any modal), in order."""
    chat = next(screen for screen in app.screen_stack if isinstance(screen, MainScreen))
    return [str(message.render()) for message in chat.query(UserMessage)]


async def test_edit_and_resend_keeps_the_replaced_turns_as_variants_to_flip_between(tokenizer: Tokenizer) -> None:
    app, backend = make_app(tokenizer, settings=GREEDY)
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        for text in ("one", "two", "three"):
            await send(pilot, text)
        await pilot.press("ctrl+r")
        await finish(pilot, 4)
        conversation = app.screen.conversation
        assert app.store.variants(conversation.id) == {2: (2, 2)}
        assert "‹2/2› variants" in shown(replies(app)[-1])

        prompt = app.screen.query_one(PromptInput)
        prompt.insert("a draft")
        await pilot.press("ctrl+g")  # the messages, the latest highlighted
        await pilot.press("up", "enter")  # edit message 2
        assert prompt.text == "two" and "editing message 2" in str(prompt.border_title)
        prompt.clear()
        await pilot.press(*"TWO", "enter")
        await finish(pilot, 5)
        assert [t.user for t in conversation.turns] == ["one", "TWO"] and users(app) == ["one", "TWO"]
        assert tokenizer.decode(backend.prefills[-1]).endswith(f"User: one\nAssistant: {REPLY}\nUser: TWO\nAssistant:")
        assert app.store.variants(conversation.id) == {1: (2, 2)}
        assert prompt.text == "" and prompt.border_title is None  # the draft went with the edit

        await pilot.press("ctrl+g", "left")  # message 2 (the latest) shows its other variant: the turns it replaced
        await pilot.pause()
        assert users(app) == ["one", "two", "three"]
        assert app.store.variants(conversation.id) == {1: (1, 2), 2: (2, 2)}
        await pilot.press("escape")
        await send(pilot, "four")  # the chat goes on from the variant shown
        prompt_text = tokenizer.decode(backend.prefills[-1])
        assert "User: three\n" in prompt_text and "TWO" not in prompt_text
        assert [t.user for t in app.store.load(conversation.id)] == ["one", "two", "three", "four"]

        await pilot.press("ctrl+g", "up", "up", "m", "c", "escape")  # message 2: copy it, then its reply
        assert clipboard_file().read_text() == REPLY and app.clipboard == REPLY
        assert [n.message.split(" (")[0] for n in app._notifications][-2:] == ["Copied message 2", "Copied the reply to message 2"]

        prompt.insert("half typed")
        await pilot.press("ctrl+g", "enter")  # edit the last message, then think better of it
        assert prompt.text == "four"
        await pilot.press("escape")
        assert prompt.text == "half typed" and prompt.border_title is None
        assert not app.screen.streaming


async def test_settings_change_applies_from_the_next_reply(tokenizer: Tokenizer) -> None:
    app, backend = make_app(tokenizer, settings=GREEDY)
    async with app.run_test(size=(120, 40)) as pilot:
        await ready(pilot)
        await send(pilot, "first")
        first_tokens = len(backend.prefills)
        assert app.screen.conversation.turns[-1].assistant == REPLY
        await pilot.press("f2")
        field = app.screen.query_one("#field-max_new_tokens")
        assert app.focused is field
        field.value = "3"
        await pilot.press("enter")
        await pilot.pause()
        assert app.settings.sampling.max_new_tokens == 3
        assert json.loads(paths.settings_file().read_text())["sampling"]["max_new_tokens"] == 3
        await pilot.press("f2")  # back to the prompt
        await send(pilot, "second")
        assert len(backend.prefills) == first_tokens + 1
        assert tokenizer.encode(" " + app.screen.conversation.turns[-1].assistant, add_bos=False) == script_ids(tokenizer)[:3]


async def test_a_greedy_only_model_shows_the_sampling_settings_as_not_applying(tokenizer: Tokenizer) -> None:
    greedy = GreedyScriptedBackend(script_ids(tokenizer), tokenizer.vocab_size, context_length=512)
    for backend, moot in ((None, False), (greedy, True)):
        app, _ = make_app(tokenizer, settings=GREEDY, loader=(lambda: (backend, tokenizer)) if backend else None)
        async with app.run_test(size=(120, 40)) as pilot:
            await ready(pilot)
            await pilot.press("f2")
            await pilot.pause()
            form = app.screen.query_one(SettingsForm)
            assert form.query_one("#settings-greedy").display is moot
            assert [form.query_one(f"#field-{name}", Input).disabled for name in ("temperature", "seed")] == [moot] * 2
            assert form.query_one("#field-max_new_tokens", Input).disabled is False
            notices = [str(notice.render()) for notice in app.screen.query(Notice)]
            assert any("decodes greedily" in text for text in notices) is moot
            if moot:
                await pilot.press("f2")
                await send(pilot, "hello")
                assert app.screen.conversation.turns[-1].assistant == REPLY  # the model's own tokens, unsampled


async def test_stepping_changes_the_field_and_only_enter_applies_once(tokenizer: Tokenizer) -> None:
    app, _ = make_app(tokenizer, settings=GREEDY)
    async with app.run_test(size=(120, 40)) as pilot:
        await ready(pilot)
        await pilot.press("f2")
        field = app.screen.query_one("#field-top_k", Input)
        field.focus()
        await pilot.press("up", "up")
        await pilot.pause()
        assert field.value == "60" and app.settings.sampling.top_k == 50  # stepped, not applied
        assert "not applied" in shown(app.screen.query_one("#settings-hint"))
        assert not app._notifications
        await pilot.press("enter")
        await pilot.pause()
        assert app.settings.sampling.top_k == 60 and load_settings()[0].sampling.top_k == 60
        assert [n.message for n in app._notifications] == ["Settings saved: they apply from the next reply"]


@pytest.mark.parametrize(
    "field, typed, key, reason",
    [
        ("temperature", "5.5", "up", "between 0.00 and 5.00"),  # typed out of range: not clamped to 5.00
        ("temperature", "0", "down", "at its lowest"),
        ("top_p", "abc", "up", "must be a number"),
    ],
)
async def test_stepping_from_a_value_it_cannot_step_is_refused_with_the_reason(
    tokenizer: Tokenizer, field: str, typed: str, key: str, reason: str
) -> None:
    app, _ = make_app(tokenizer, settings=GREEDY)
    async with app.run_test(size=(120, 40)) as pilot:
        await ready(pilot)
        await pilot.press("f2")
        box = app.screen.query_one(f"#field-{field}", Input)
        box.focus()
        await pilot.press("ctrl+u", *typed, key)
        await pilot.pause()
        assert box.value == typed  # left as typed
        error = app.screen.query_one("#settings-error")
        assert error.display and reason in str(error.render())
        assert app.settings.sampling == GREEDY.sampling


@pytest.mark.parametrize("field, value", [("temperature", "9"), ("top_p", "abc"), ("max_new_tokens", "0")])
async def test_invalid_setting_is_refused(tokenizer: Tokenizer, field: str, value: str) -> None:
    app, _ = make_app(tokenizer, settings=GREEDY)
    async with app.run_test(size=(120, 40)) as pilot:
        await ready(pilot)
        await pilot.press("f2")
        before, on_disk = app.settings, load_settings()[0]
        app.screen.query_one(f"#field-{field}").value = value
        app.screen.query_one(f"#field-{field}").focus()
        await pilot.press("enter")
        await pilot.pause()
        assert app.settings == before
        assert load_settings()[0] == on_disk  # nothing out of range reached the file
        error = app.screen.query_one("#settings-error")
        assert error.display and "Not applied" in str(error.render())
        with pytest.raises(UserError):
            app.screen.query_one(SettingsForm).read()


async def test_history_survives_an_app_restart(tokenizer: Tokenizer) -> None:
    app, _ = make_app(tokenizer, settings=GREEDY)
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        await send(pilot, "Remember me")
    app.store.close()

    app, backend = make_app(tokenizer, settings=GREEDY)
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        await pilot.press("ctrl+o")
        await pilot.pause()
        await pilot.press("enter")
        await pilot.pause()
        assert [m.render().plain for m in app.screen.query(UserMessage)] == ["Remember me"]
        assert replies(app)[0].text == REPLY
        await send(pilot, "And again")  # the reopened turns are part of the next prompt
        assert "Remember me" in tokenizer.decode(backend.prefills[-1])
        assert app.store.list_conversations()[0].turns == 2


async def test_conversation_list_deletes_after_asking(tokenizer: Tokenizer) -> None:
    app, _ = make_app(tokenizer, settings=GREEDY)
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        await send(pilot, "kept")
        await pilot.press("ctrl+n")
        await send(pilot, "to be deleted")
        await pilot.press("ctrl+o")
        await pilot.pause()
        await pilot.press("d", "down")  # asked, then moved away: nothing deleted
        await pilot.pause()
        assert len(app.store.list_conversations()) == 2
        await pilot.press("up", "d")
        await pilot.pause()
        assert "Delete “to be deleted”?" in str(app.screen.query_one("#conversations-title").render())
        assert len(app.store.list_conversations()) == 2
        await pilot.press("d")
        await pilot.pause()
        assert [c.title for c in app.store.list_conversations()] == ["kept"]
        await pilot.press("escape")
        await pilot.pause()
        assert not app.screen.query(UserMessage)  # the open conversation was the deleted one


async def test_conversation_list_renames(tokenizer: Tokenizer) -> None:
    app, _ = make_app(tokenizer, settings=GREEDY)
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        await send(pilot, "old title")
        await pilot.press("ctrl+o")
        await pilot.pause()
        await pilot.press("r", "ctrl+u", *"Trip to Rome", "escape")  # escape keeps the old title
        await pilot.pause()
        assert [c.title for c in app.store.list_conversations()] == ["old title"]
        await pilot.press("r", "ctrl+u", *"Trip to Rome", "enter")
        await pilot.pause()
        assert [c.title for c in app.store.list_conversations()] == ["Trip to Rome"]
        assert "Trip to Rome" in str(app.screen.query_one("#conversations-list").get_option_at_index(0).prompt)


async def test_corrupt_history_is_set_aside_with_a_warning(tokenizer: Tokenizer) -> None:
    history = paths.history_file()
    history.parent.mkdir(parents=True)
    history.write_bytes(b"this is not a database" * 100)
    app, _ = make_app(tokenizer, settings=GREEDY)
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        notices = [str(n.render()) for n in app.screen.query(Notice)]
        assert any("moved it to history.sqlite3.corrupt-" in n for n in notices)
        await send(pilot, "fresh start")
    aside = list(history.parent.glob("history.sqlite3.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes().startswith(b"this is not a database")
    assert app.store.list_conversations()[0].turns == 1


async def test_theme_switching_is_remembered(tokenizer: Tokenizer) -> None:
    app, _ = make_app(tokenizer)
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        assert app.theme == "dark"
        await pilot.press("ctrl+t")
        await pilot.pause()
        assert app.theme == "high-contrast"
        app.theme = "light"  # what the palette's "Change theme" does
        await pilot.pause()
    assert load_settings()[0].theme == "light"
    app, _ = make_app(tokenizer, settings=load_settings()[0])
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        assert app.theme == "light"
        assert app.current_theme.background.lower() == "#f6f7f9"


@pytest.mark.parametrize(
    "declarations, named",
    [("$primary: #zzzzzz;", "$primary: '#zzzzzz' is not a colour"),
     ("$primary: #4EA1D3;\n$footer-key-foreground: not-a-colour;", "$footer-key-foreground: 'not-a-colour'")],
)  # fmt: skip
async def test_a_user_theme_with_a_bad_colour_saved_as_current_falls_back_with_a_warning(
    tokenizer: Tokenizer, declarations: str, named: str
) -> None:
    paths.user_themes_dir().mkdir(parents=True)
    (paths.user_themes_dir() / "mine.tcss").write_text(declarations)
    app, _ = make_app(tokenizer, settings=Settings(theme="mine"))
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        assert app.theme == "dark"
        notices = [str(n.render()) for n in app.screen.query(Notice)]
        assert any("mine.tcss" in n and named in n for n in notices), notices


async def test_80x24_layout_switches_panes_by_key(tokenizer: Tokenizer) -> None:
    app, _ = make_app(tokenizer)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        chat, side = app.screen.query_one("#chat"), app.screen.query_one("#side")
        assert chat.display and not side.display
        assert chat.region.width == 80 and app.screen.query_one("#prompt").region.height >= 1
        await pilot.press("f3")
        await pilot.pause()
        assert side.display and not chat.display and side.region.width == 80
        await pilot.press("escape")  # nothing streams: escape brings the chat back
        await pilot.pause()
        assert chat.display and not side.display
        await pilot.press("f2")
        await pilot.pause()
        assert side.display and app.focused is app.screen.query_one("#field-max_new_tokens")
        assert app.screen.query_one("#field-seed").region.bottom <= 23  # the form fits above the footer
        shown = [(key.key_display or key.key, key.region.right) for key in app.screen.query("FooterKey")]
        assert shown and all(right <= 80 for _, right in shown), shown  # every key of the footer is on screen
        await pilot.press("f2")
        await pilot.pause()
        assert chat.display and app.focused is app.screen.query_one("#prompt")


async def test_the_stats_pane_opened_later_shows_what_was_sampled_while_it_was_closed(tokenizer: Tokenizer) -> None:
    """A closed pane is not redrawn each second (each update of a hidden widget costs Textual a whole
    layout pass); opening it shows the latest figures and the speeds of the reply streamed meanwhile."""
    app, _ = make_app(tokenizer, settings=GREEDY, delay=0.05, script=script_ids(tokenizer, "and so on " * 15))
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        await send(pilot, "Hello")  # about 2.5 s: the stats are sampled while it streams, the pane closed
        panel = app.screen.query_one(StatsPanel)
        assert panel.view.tokens_per_second is None  # not drawn while closed
        await pilot.press("f3")
        await wait_until(pilot, lambda: ("Host CPU", "12 %") in rows(panel.view))
        decode = dict(rows(panel.view))["Decode"]
        assert decode.endswith("tok/s") and decode != "—"
        await wait_until(pilot, lambda: all(t in "\n".join(screen_rows(app)) for t in ("12 %", decode, "tok/s (peak")))


async def test_wide_layout_shows_stats_beside_the_chat(tokenizer: Tokenizer) -> None:
    app, _ = make_app(tokenizer)
    async with app.run_test(size=(120, 40)) as pilot:
        await ready(pilot)
        panel = app.screen.query_one(StatsPanel)
        await wait_until(pilot, lambda: ("Host CPU", "12 %") in rows(panel.view))
        chat, side = app.screen.query_one("#chat"), app.screen.query_one("#side")
        assert chat.display and side.display and chat.region.width + side.region.width == 120
        table = dict(rows(panel.view))
        assert table["Backend"] == "scripted" and table["KV cache"] == "0 / 4096"
        assert table["Host mem"] == "2.0 GiB / 8.0 GiB"
        await pilot.pause()
        shown = [line for line in panel.query(".stats-row") if line.display]
        assert [line.region.y for line in shown] == list(range(shown[0].region.y, shown[0].region.y + len(table)))
        assert len(shown) == len(table)  # the host has no TPU rows, and they take no lines


async def test_growing_past_the_breakpoint_opens_the_pane_and_keeps_the_prompt_focused(tokenizer: Tokenizer) -> None:
    app, _ = make_app(tokenizer, settings=GREEDY)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        await send(pilot, "hello")
        await pilot.resize_terminal(140, 40)
        await wait_until(pilot, lambda: app.screen.pane == "stats")
        await pilot.pause()
        assert app.focused is app.screen.query_one("#prompt")
        await pilot.press("o", "k")
        assert app.screen.query_one("#prompt").text == "ok"



async def test_narrowing_keeps_the_settings_pane_that_holds_the_focus_over_the_chat(tokenizer: Tokenizer) -> None:
    """Hidden, the pane would keep the focus and every key typed would go nowhere in sight."""
    app, _ = make_app(tokenizer, settings=GREEDY)
    async with app.run_test(size=(120, 40)) as pilot:
        await ready(pilot)
        await pilot.press("f2")
        field = app.screen.query_one("#field-max_new_tokens", Input)
        await wait_until(pilot, lambda: app.focused is field)
        await pilot.resize_terminal(60, 15)
        await wait_until(pilot, lambda: app.screen.narrow)
        await pilot.pause()
        assert app.screen.pane == "settings" and field.region.width > 0 and app.focused is field
        await pilot.press("escape")  # closes the pane over the chat: back to the prompt
        await wait_until(pilot, lambda: app.screen.pane == "hidden")
        await pilot.press("o", "k")
        assert app.screen.query_one("#prompt").text == "ok"

async def test_model_load_error_is_shown_not_raised(tokenizer: Tokenizer) -> None:
    def broken():  # type: ignore[no-untyped-def]
        raise UserError("/models/x: config.json not found")

    app, _ = make_app(tokenizer, loader=broken)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until(pilot, lambda: app.load_error is not None)
        await pilot.pause()
        assert any("config.json not found" in str(n.render()) for n in app.screen.query(Notice))
        app.screen.query_one("#prompt").insert("hello")
        await pilot.press("enter")
        await pilot.pause()
        assert not app.screen.conversation.turns and app.is_running


async def test_backend_error_mid_reply_is_shown_and_the_partial_reply_kept(tokenizer: Tokenizer) -> None:
    app, _ = make_app(tokenizer, settings=GREEDY, fail_at=5)
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        await send(pilot, "boom")
        view = replies(app)[-1]
        assert view.error and "device lost" in view.error
        assert app.screen.conversation.turns[-1].stopped and app.is_running
    saved = app.store.load(app.store.list_conversations()[0].id)[0]
    assert saved.stopped


async def test_quitting_mid_reply_stops_saves_and_frees_the_backend(tokenizer: Tokenizer) -> None:
    app, backend = long_reply_app(tokenizer, 50)
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        app.screen.query_one("#prompt").insert("long")
        await pilot.press("enter")
        await wait_until(pilot, lambda: app.screen.streaming and len(app.screen.conversation.turns[-1].assistant) > 10)
        job = app.screen.in_flight
        await pilot.press("ctrl+q")
    assert job.done.is_set() and backend.closed
    saved = app.store.load(app.store.list_conversations()[0].id)[0]
    assert saved.stopped and saved.assistant


async def test_demo_mode_says_so_and_is_not_remembered(tokenizer: Tokenizer) -> None:
    app, _ = make_app(tokenizer, demo=True)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        text = " ".join(str(n.render()) for n in app.screen.query(Notice))
        assert "built-in demo model" in text and "--model DIR" in text
        assert "DEMO" in str(app.screen.query_one("#status").render())


async def test_help_and_palette_list_every_action(tokenizer: Tokenizer) -> None:
    app, _ = make_app(tokenizer)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        commands = {c.title: c.help for c in app.get_system_commands(app.screen)}
        keys = [b for b in (*MainScreen.BINDINGS, *OptTuiApp.BINDINGS) if isinstance(b, Binding)]
        for binding in keys:  # every action of the chat is in the palette, with its key
            assert any(f"({binding.key})" in help for help in commands.values()), binding.key
        assert "Theme" in commands  # ours (ctrl+t)
        assert any(title.split()[0] == "Quit" for title in commands)  # Textual's own: "Quit" (8), "Quit the application" (6.2)
        await pilot.press("f1")
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)
        shown = app.screen.query_one(Markdown).source
        explained = [b for b in PromptInput.BINDINGS if isinstance(b, Binding) and b.tooltip]  # (its ctrl+f is the chat's)
        for binding in (*keys, *explained):  # help is built from the bindings: none is missing
            assert f"| `{binding.key_display or binding.key}` | {binding.tooltip} |" in shown
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, HelpScreen)


async def test_new_conversation_clears_the_transcript(tokenizer: Tokenizer) -> None:
    app, _ = make_app(tokenizer, settings=GREEDY)
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        await send(pilot, "one")
        await pilot.press("ctrl+n")
        await pilot.pause()
        assert not replies(app) and not app.screen.conversation.turns
        await send(pilot, "two")
    assert [c.turns for c in app.store.list_conversations()] == [1, 1]


def test_history_file_path_is_under_the_test_data_dir(tmp_path: Path) -> None:
    assert str(paths.history_file()).startswith(str(tmp_path))
    store, warning = HistoryStore.open()
    assert warning is None and store.path == paths.history_file()
    store.close()


PARAGRAPH = "The quick brown fox jumps over the lazy dog. " * 6 + "\n\n"


def paragraphs_app(tokenizer: Tokenizer, delay: float):  # type: ignore[no-untyped-def]
    """The app over a reply of 20 paragraphs, far longer than the view, at ``delay`` seconds a token."""
    settings = Settings(sampling=SamplingSettings(temperature=0.0, repetition_penalty=1.0, max_new_tokens=4000))
    return make_app(tokenizer, script=script_ids(tokenizer, PARAGRAPH * 20), delay=delay, settings=settings)


async def test_a_streaming_reply_is_rows_that_grow_a_room_at_a_time_and_ends_as_one_widget(
    tokenizer: Tokenizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reply streams into one widget of rows, wrapped as the screen shows them; the screen is laid
    out once per room of rows, not per row, nor twice per room (a layout moves and repaints the
    whole transcript)."""
    layouts = []
    refresh_layout = Screen._refresh_layout

    def counted(self: Screen, *args: object, **kwargs: object) -> None:
        layouts.append(self)
        refresh_layout(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Screen, "_refresh_layout", counted)
    app, _ = paragraphs_app(tokenizer, delay=0.003)
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        await submit(pilot, "many paragraphs")
        transcript = app.screen.query_one(Transcript)
        await wait_until(pilot, lambda: bool(transcript.query(ReplyRows)))
        layouts.clear()
        view = replies(app)[-1]

        def grown() -> bool:  # rows wrapped before a resize (the pane opening) are wrapped again by the next batch
            found = transcript.query(ReplyRows)  # none while they are being wrapped again
            if not found:
                return False
            reply_rows = found.first()
            fit = all(cell_len(row) <= reply_rows.content_region.width for row in reply_rows.rows)
            return len(reply_rows.rows) > 5 * reply_rows.room and fit

        await wait_until(pilot, grown)
        reply_rows = transcript.query_one(ReplyRows)
        written = list(reply_rows.rows)
        assert len(transcript.query(ReplyRows)) == 1 and written[-1] != ""
        assert len(written) <= reply_rows.size.height < len(written) + reply_rows.room  # the rows and at most a room after them
        assert " ".join(view.text.split()).startswith(" ".join(" ".join(written).split()))
        writing = reply_rows.region.y + len(written) - 1  # the screen row of the row being written
        assert transcript.region.y <= writing < transcript.region.bottom  # the transcript follows the end
        assert len(layouts) <= len(written) // reply_rows.room + 4, f"{len(layouts)} layouts for {len(written)} rows"
        await finish(pilot, 1)
        assert not transcript.query(ReplyRows) and shown(view).startswith("█ The quick brown fox jumps")
        assert view.text == app.screen.conversation.turns[-1].assistant == (PARAGRAPH * 20).strip()


async def test_the_row_being_written_stays_in_view_when_the_terminal_gets_shorter(tokenizer: Tokenizer) -> None:
    """The room after the row being written is two thirds of the view as it is now, not as it was when the reply
    started: with the old room a shorter view showed only empty rows after each move up."""
    app, _ = paragraphs_app(tokenizer, delay=0.004)
    async with app.run_test(size=(100, 40)) as pilot:
        await ready(pilot)
        await submit(pilot, "many paragraphs")
        transcript = app.screen.query_one(Transcript)
        await wait_until(pilot, lambda: bool(transcript.query(ReplyRows)) and len(transcript.query_one(ReplyRows).rows) > 5)
        await pilot.resize_terminal(100, 16)
        await pilot.pause(0.3)  # the next batch of tokens (8 a second) fits the room to the view
        for _ in range(40):  # through several moves up
            await pilot.pause(0.05)
            found = transcript.query(ReplyRows)
            if found:
                rows = found.first()
                writing = rows.region.y + len(rows.rows) - 1
                assert transcript.region.y <= writing < transcript.region.bottom, "the row being written is out of view"
        await finish(pilot, 1)


async def test_the_repaints_of_a_streaming_reply_add_up_to_the_screen_drawn_whole(tokenizer: Tokenizer) -> None:
    """Every update the compositor makes, written in turn to a terminal emulator (pyte), leaves the
    screen it would draw whole: the streaming rows, the transcript moving up and a notice over the
    chat each repaint only the rows they changed (tui/compositor.py), and each row from the right
    widget and line. Compared while the reply waits for its next token, so nothing is pending."""
    size = (100, 30)
    console = Console(width=size[0], height=size[1], color_system="truecolor", force_terminal=True)
    terminal = pyte.Screen(*size)
    stream = pyte.Stream(terminal)
    app, backend = paragraphs_app(tokenizer, delay=0.002)
    go_on, decode = threading.Event(), backend.decode

    def decode_until_told(token: int):  # type: ignore[no-untyped-def]
        if backend.decodes == 700:
            go_on.wait(30)
        return decode(token)

    backend.decode = decode_until_told  # type: ignore[method-assign]
    render_update = DrawnCompositor.render_update

    def written(self: DrawnCompositor, *args: object, **kwargs: object) -> object:
        update = render_update(self, *args, **kwargs)  # type: ignore[arg-type]
        if update is not None and self is app.screen._compositor:
            stream.feed(update.render_segments(console))  # type: ignore[attr-defined]
        return update

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(DrawnCompositor, "render_update", written)
        async with app.run_test(size=size, notifications=True) as pilot:
            await ready(pilot)
            app.notify("a notice\nover the chat\nwhile the\nreply\nstreams", timeout=60)  # tall: up into the transcript
            await submit(pilot, "many paragraphs")
            try:
                await wait_until(pilot, lambda: backend.decodes >= 700)
                for _ in range(4):  # the last batch of tokens is shown (the flush timer runs at 8 Hz)
                    await pilot.pause(0.15)
                chat = app.screen.query_one("#chat").region
                toast = app.screen.query_one(Toast).region
                assert toast.x < chat.right and toast.overlaps(app.screen.query_one(Transcript).region)
                drawn = [strip.text[: chat.right] for strip in app.screen._compositor.render_strips()]
                assert [line[: chat.right] for line in terminal.display] == drawn
                assert sum("The quick brown fox" in line for line in drawn) > 5
            finally:
                go_on.set()
            await finish(pilot, 1)


async def test_the_context_meter_is_the_next_prompt_and_warns_before_old_turns_drop(tokenizer: Tokenizer) -> None:
    assert len(tokenizer.encode(" France", add_bos=False)) == 1  # so the next prompt is exactly the meter's count
    settings = Settings(sampling=SamplingSettings(temperature=0.0, repetition_penalty=1.0, max_new_tokens=16))
    app, backend = make_app(tokenizer, settings=settings)
    backend.context_length = 200
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        status = app.screen.query_one(StatusLine)
        warned = False
        for _ in range(30):
            meter, warned = status.context_used, status.drops_next
            await send(pilot, "France")
            if warned:
                break
            assert len(backend.prefills[-1]) == meter  # all turns kept, counted exactly
            assert not app.screen.query(".context-start")
        assert warned, "the meter never said the context was full"
        assert len(backend.prefills[-1]) < meter  # the turn after the warning dropped the oldest turns
        markers = app.screen.query(".context-start")
        assert len(markers) == 1 and "left its context" in str(markers.first().render())
        assert not status.drops_next  # a quarter of the context was freed
        assert "context" in shown(status) and "tok/s" in shown(status)


async def test_a_reopened_conversation_shows_its_context_use(tokenizer: Tokenizer) -> None:
    store, _ = HistoryStore.open()
    cid = store.create_conversation("What is the capital of France?")
    turn = store.add_turn(cid, "What is the capital of France?")
    store.save_reply(turn, "The capital of France is Paris.", stopped=False, complete=True)
    store.close()
    settings = Settings(sampling=SamplingSettings(temperature=0.0, repetition_penalty=1.0, max_new_tokens=16))
    app, backend = make_app(tokenizer, settings=settings)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        status = app.screen.query_one(StatusLine)
        empty = status.context_used
        await app.screen.open_conversation(cid)
        await pilot.pause()
        assert status.context_used > empty
        meter = status.context_used
        await send(pilot, "France")
        assert len(backend.prefills[-1]) == meter


async def test_a_turn_that_filled_the_context_shows_it_full_not_past_it(tokenizer: Tokenizer) -> None:
    """A message and its reply took the whole context (the reply stopped there): 128/128 full, not past it."""
    app, backend = make_app(tokenizer, settings=GREEDY, script=script_ids(tokenizer, "and so on " * 100, eos=False))
    backend.context_length = 128
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        await send(pilot, "France")
        assert backend.length == 128  # the reply ran to the end of the context
        status = app.screen.query_one(StatusLine)
        assert status.context_used == 128 and status.drops_next
        await send(pilot, "France")
        assert backend.prefills[-1] == backend.prefills[0]  # the turn that filled the context was left out


async def test_a_reopened_chat_that_outgrew_the_context_shows_what_the_next_prompt_keeps(tokenizer: Tokenizer) -> None:
    """Not the whole chat's tokens (that read 565/512 before): the turns the model still sees, and the marker."""
    store, _ = HistoryStore.open()
    cid = store.create_conversation("long")
    for i in range(12):
        store.save_reply(store.add_turn(cid, f"question number {i}"), f"the answer number {i}", complete=True)
    store.close()
    settings = Settings(sampling=SamplingSettings(temperature=0.0, repetition_penalty=1.0, max_new_tokens=16))
    app, backend = make_app(tokenizer, settings=settings)
    backend.context_length = 120
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        await app.screen.open_conversation(cid)
        await pilot.pause()
        status = app.screen.query_one(StatusLine)
        meter = status.context_used
        assert 0 < meter <= 120 and status.drops_next  # as a live chat shows it after the last reply: full
        assert len(app.screen.query(".context-start")) == 1
        await send(pilot, "France")
        assert len(backend.prefills[-1]) + 16 <= 120 and len(backend.prefills[-1]) < meter  # more turns left out


@pytest.mark.parametrize("width", [60, 80, 120])
async def test_the_status_line_keeps_its_figures_and_shortens_a_long_model_name(tokenizer: Tokenizer, width: int) -> None:
    app, _ = make_app(tokenizer)
    async with app.run_test(size=(width, 24)) as pilot:
        await ready(pilot)
        await send(pilot, "Hello")
        app.screen.pane = "hidden"  # the status line as wide as the terminal
        status = app.screen.query_one(StatusLine)
        status.model = "facebook-opt-6.7b-int4-with-a-very-long-directory-name-indeed"
        await pilot.pause()
        line = shown(status)
        assert line.rstrip().endswith("f1 help") and "context " in line and "ready" in line
        if width >= 80:  # the model's name is shortened to leave the last reply's figures room
            assert "tok/s" in line and "…" in line
        if width >= 120:
            assert "first " in line


async def test_a_reply_ending_during_a_slow_flush_leaves_no_rows_behind(
    tokenizer: Tokenizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reply ends while a flush is still mounting its rows: finishing must wait for it.

    (A flush run by the timer's own task was cancelled there, and the rows it had just
    mounted were never removed.) Each mount of reply rows is made to take 0.3 s.
    """
    mount_rows = ReplyView._mount_rows

    async def slow_mount(self: ReplyView, rows: ReplyRows) -> None:
        await mount_rows(self, rows)
        await asyncio.sleep(0.3)

    monkeypatch.setattr(ReplyView, "_mount_rows", slow_mount)
    app, _ = make_app(tokenizer, delay=0.008)  # the reply ends while the first flush mounts its rows
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        for turn in range(3):
            await send(pilot, f"message {turn}")
        transcript = app.screen.query_one(Transcript)
        messages = [type(child) for child in transcript.children if not isinstance(child, Notice)]  # ("Model loaded")
        assert messages == [UserMessage, ReplyView] * 3


@pytest.mark.parametrize(
    "text, width, taken",
    [
        ("short", 10, None),  # may still grow
        ("exactly10!", 10, None),
        ("two words here", 9, ("two words", "here")),
        ("line\nnext", 20, ("line", "next")),
        ("abcdefghijkl", 5, ("abcde", "fghijkl")),  # no space: cut at the width
        ("日本語のテキスト", 6, ("日本語", "のテキスト")),  # wide characters count two cells
    ],
)
def test_take_line_wraps_like_the_screen(text: str, width: int, taken: tuple[str, str] | None) -> None:
    assert take_line(text, width) == taken


async def test_a_reopened_chat_sits_where_it_sat_after_its_reply(tokenizer: Tokenizer) -> None:
    app, _ = make_app(tokenizer, settings=GREEDY)
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        await send(pilot, "Hi there")
        after_reply = app.screen.query_one(UserMessage).region
        conversation = app.screen.conversation.id
    app, _ = make_app(tokenizer, settings=GREEDY)  # the next session, as from the conversation list
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        await app.screen.open_conversation(conversation)
        await wait_until(pilot, lambda: bool(app.screen.query(UserMessage)))
        await pilot.pause()
        assert app.screen.query_one(UserMessage).region == after_reply
        reopened = replies(app)[-1]
        # a reply from the history is one Static, not a Markdown widget tree: long chats open fast
        assert reopened.text == REPLY and not reopened.query("Markdown")


def test_the_readme_key_table_is_the_one_help_shows() -> None:
    """Row for row, key and words: `python -m opt_tpu_tui.tui.screens.help` prints it for the README."""
    from opt_tpu_tui.tui.screens.help import all_keys, key_table

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    table = readme[readme.index("| key | action |") :].split("\n\n")[0]
    assert table.splitlines()[2:] == key_table(all_keys()).splitlines()


@pytest.mark.parametrize("no_color", [False, True])
async def test_without_colour_each_message_says_whose_it_is(
    tokenizer: Tokenizer, monkeypatch: pytest.MonkeyPatch, no_color: bool
) -> None:
    if no_color:
        monkeypatch.setenv("NO_COLOR", "1")  # read (and removed) by the app when it is made
    app, _ = make_app(tokenizer)
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        await send(pilot, "hello there")
        user, reply = shown(app.screen.query(UserMessage).last()), shown(app.screen.query(ReplyView).last())
        assert ("you" in user.splitlines()[0]) == no_color
        assert ("scripted-opt" in reply.splitlines()[0]) == no_color  # with colour, the bars' colours tell them apart


def seed_history(turns: int, needle_at: int) -> tuple[int, int]:
    """An old conversation of ``turns`` turns whose turn ``needle_at`` mentions a needle, then a newer one that does too.

    Returns (old, new) ids: the newer one is listed first, so choosing the old takes ↓.
    """
    store, _ = HistoryStore.open()
    old = store.create_conversation("long chat")
    for i in range(turns):
        user = "where is the Needle_42?" if i == needle_at else f"message {i}"
        store.save_reply(store.add_turn(old, user), f"reply {i}", complete=True)
    new = store.create_conversation("recent")
    store.save_reply(store.add_turn(new, "recent"), "a needle_42 here too", complete=True)
    store.close()
    return old, new


def on_screen(widget: Widget, transcript: Widget) -> bool:
    """The widget's top row is inside the transcript's visible rows."""
    region = widget.region
    return bool(region) and transcript.region.y <= region.y < transcript.region.bottom


async def search_for(pilot, text: str) -> None:  # type: ignore[no-untyped-def]
    """Open the search (ctrl+f), type ``text`` and wait for its results."""
    await pilot.press("ctrl+f")
    await wait_until(pilot, lambda: isinstance(pilot.app.screen, SearchScreen))
    await pilot.press(*text)
    await wait_until(pilot, lambda: pilot.app.screen.searched == text)
    await pilot.pause()


@pytest.mark.parametrize("size", [(80, 24), (60, 15)], ids=["80x24", "60x15"])
async def test_search_opens_an_old_conversation_at_a_match_older_than_the_mounted_window(
    tokenizer: Tokenizer, size: tuple[int, int]
) -> None:
    turns, needle_at = Transcript.MOUNTED, 12  # twice the turns mounted: turn 12 is far out of the last window
    old, new = seed_history(turns, needle_at)
    app, _ = make_app(tokenizer, settings=GREEDY)
    async with app.run_test(size=size) as pilot:
        await ready(pilot)
        await search_for(pilot, "needle_4")  # "_" taken literally, any case
        search = app.screen
        assert [(hit.conversation_id, hit.turn) for hit in search.hits] == [(new, 0), (old, needle_at)]
        results = search.query_one("#search-results")
        assert "Needle_4" in shown(results) and "long chat · turn 13 · you" in shown(results)
        await pilot.press("down", "enter")
        await wait_until(pilot, lambda: isinstance(app.screen, MainScreen) and app.screen.conversation.id == old)
        await pilot.pause()
        transcript = app.screen.query_one(Transcript)
        found = next(m for m in app.screen.query(UserMessage) if "Needle_42" in str(m.render()))
        await wait_until(pilot, lambda: on_screen(found, transcript))
        assert found.has_class("-found")
        messages = len(app.screen.query(UserMessage)) + len(app.screen.query(ReplyView))
        assert messages <= Transcript.MOUNTED  # a window, not the whole chat
        assert 0 < transcript.later_messages and transcript.hidden_messages + messages + transcript.later_messages == 2 * turns
        await send(pilot, "and now?")  # the chat goes on from its end
        assert transcript.later_messages == 0
        assert str(app.screen.query(UserMessage)[-2].render()) == f"message {turns - 1}"
        assert app.store.load(old)[-1].user == "and now?"


async def test_a_message_too_long_for_the_context_comes_back_with_the_cursor_where_typing_goes_on(
    tokenizer: Tokenizer,
) -> None:
    app, backend = make_app(tokenizer)
    backend.context_length = 64
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        prompt = app.screen.query_one(PromptInput)
        prompt.focus()
        long = " ".join(["word"] * 60) + "\nlast line"
        prompt.insert(long)
        await pilot.press("enter")
        await wait_until(pilot, lambda: prompt.text == long)
        await pilot.press(*"XYZ")
        assert prompt.text == long + "XYZ"  # not "XYZword word ...": the cursor stayed at the end
        assert not app.store.list_conversations()


@pytest.mark.parametrize("size", [(60, 15), (80, 24)], ids=["60x15", "80x24"])
async def test_the_conversation_list_keeps_one_row_an_entry_and_its_whole_header(
    tokenizer: Tokenizer, size: tuple[int, int]
) -> None:
    store, _ = HistoryStore.open()
    cid = store.create_conversation("apple banana cherry " * 8)
    store.save_reply(store.add_turn(cid, "fruit"), "yes", complete=True)
    store.close()
    app, _ = make_app(tokenizer)
    async with app.run_test(size=size) as pilot:
        await ready(pilot)
        await pilot.press("ctrl+o")
        await wait_until(pilot, lambda: any("1 turn " in row for row in screen_rows(app)))
        rows = screen_rows(app)
        entry = [row for row in rows if "apple banana" in row]
        assert len(entry) == 1 and "…" in entry[0] and "1 turn " in entry[0], rows
        assert "escape closes" in " ".join(" ".join(row.replace("│", " ").split()) for row in rows), rows


async def test_lines_typed_or_pasted_while_a_reply_streams_stay_apart_and_are_told_once(tokenizer: Tokenizer) -> None:
    """An unbracketed paste is keys with enters; while a reply streams the enters cannot send, and the
    lines ran together ('...14L03 ...'), with a notice stacked for each."""
    app, _ = make_app(tokenizer, settings=GREEDY, delay=0.05, script=script_ids(tokenizer, "and so on " * 20))
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        prompt = app.screen.query_one(PromptInput)
        prompt.insert("first")
        await pilot.press("enter")
        await wait_until(pilot, lambda: app.screen.in_flight is not None)
        await pilot.press(*"L01 a", "enter", *"L02 b", "enter", *"L03 c")
        assert app.screen.in_flight is not None  # still streaming: nothing was sent
        assert prompt.text == "L01 a\nL02 b\nL03 c"
        assert sum("streaming" in n.message for n in app._notifications) == 1
        await finish(pilot, 1)
        await pilot.press("enter")
        await finish(pilot, 2)
        assert app.screen.conversation.turns[-1].user == "L01 a\nL02 b\nL03 c"


def screen_rows(app: OptTuiApp) -> list[str]:
    """What the terminal shows, row by row (the compositor's whole frame)."""
    return [strip.text for strip in app.screen._compositor.render_strips()]


@pytest.mark.parametrize("deep", [True, False], ids=["deep-in-a-tall-reply", "near-its-top"])
async def test_search_scrolls_to_the_matched_line_of_a_tall_reply(tokenizer: Tokenizer, deep: bool) -> None:
    """A match 60 paragraphs down a reply shows on screen, not just the reply's top; a match near the
    top shows the reply from its first line."""
    paragraphs = [f"Paragraph {i} of a long answer." for i in range(80)]
    paragraphs[60 if deep else 1] = "Here the CHARTREUSE_zebra grazes."
    store, _ = HistoryStore.open()
    cid = store.create_conversation("tall")
    store.save_reply(store.add_turn(cid, "tell me everything"), "\n\n".join(paragraphs), complete=True)
    store.save_reply(store.add_turn(cid, "thanks"), "you are welcome", complete=True)
    store.close()
    app, _ = make_app(tokenizer)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        await search_for(pilot, "chartreuse_ZEBRA")
        await pilot.press("enter")
        await wait_until(pilot, lambda: isinstance(app.screen, MainScreen) and app.screen.conversation.id == cid)
        await wait_until(pilot, lambda: any("CHARTREUSE_zebra" in row for row in screen_rows(app)))
        rows = screen_rows(app)
        assert ("Paragraph 0 of" in "".join(rows)) is not deep  # deep: scrolled past the reply's top
        if deep:  # the match near the top of the view, a line above it for context
            assert [i for i, row in enumerate(rows) if "CHARTREUSE_zebra" in row] == [2], rows


async def test_search_closes_with_escape_and_says_when_nothing_matches(tokenizer: Tokenizer) -> None:
    seed_history(3, 1)
    app, _ = make_app(tokenizer)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        await search_for(pilot, "100%")
        assert app.screen.hits == [] and "No conversation holds that." in shown(app.screen.query_one("#search-results"))
        await pilot.press("enter")  # nothing to open
        assert isinstance(app.screen, SearchScreen)
        await pilot.press("escape")
        await wait_until(pilot, lambda: isinstance(app.screen, MainScreen))
        assert app.screen.conversation.id is None


async def test_search_typed_ahead_with_enter_opens_the_first_match(tokenizer: Tokenizer) -> None:
    """Over SSH the query and enter can come as one burst, before any result is on screen."""
    _, new = seed_history(3, 1)
    app, _ = make_app(tokenizer)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        await pilot.press("ctrl+f", *"needle", "enter")
        await wait_until(pilot, lambda: isinstance(app.screen, MainScreen) and app.screen.conversation.id == new)
        reply = replies(app)[-1]
        assert reply.text == "a needle_42 here too" and reply.has_class("-found")  # the match was in the reply


def damaged_history() -> Path:
    """The default history with two conversations, its pages past the first overwritten (the header intact)."""
    path = paths.history_file()
    store, _ = HistoryStore.open(path)
    for n in range(2):
        cid = store.create_conversation(f"chat {n}")
        for i in range(20):
            store.save_reply(store.add_turn(cid, f"question {n}.{i} " + "x" * 300), "answer " + "y" * 300, complete=True)
    store.close()
    data = bytearray(path.read_bytes())
    data[4096::97] = b"\xab" * len(data[4096::97])
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("first", ["ctrl+o", "ctrl+f", "send"])
async def test_a_history_found_damaged_while_running_is_one_warning_and_the_chat_goes_on(
    tokenizer: Tokenizer, first: str
) -> None:
    path = damaged_history()
    damaged = path.read_bytes()
    app, _ = make_app(tokenizer, settings=GREEDY)
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        if first == "send":
            await send(pilot, "hello")
        else:
            await pilot.press(first)
            await pilot.pause()
            if first == "ctrl+f":
                await pilot.press(*"question")
                await wait_until(pilot, lambda: app.screen.searched == "question")
                assert "damaged" in str(app.screen.query_one("#search-results").get_option_at_index(0).prompt)
            await pilot.press("escape")
            await pilot.pause()
        said = [n.message for n in app._notifications if "damaged" in n.message]
        assert said and all(len(line.splitlines()) == 1 for line in said)
        assert str(path) in said[0] and "next start" in said[0] and "h.sqlite3.corrupt-" not in said[0]
        assert not app.store.writable and isinstance(app.screen, MainScreen)
        if first != "send":
            await send(pilot, "hello")  # not refused: the reply runs, unsaved, and says so
        assert [m.render().plain for m in app.screen.query(UserMessage)] == ["hello"]
        assert replies(app)[-1].text == REPLY
        assert any(n.message.startswith("Not saved:") for n in app._notifications)
        for keys, shown_in in ((["ctrl+o", "r", *"newname", "enter"], "#conversations-list"),
                               (["ctrl+f", *"zzzquery", "enter"], "#search-results")):  # fmt: skip
            await pilot.press(*keys)  # a burst: the list opens all the same, saying why, and takes what follows
            await pilot.pause()
            assert not isinstance(app.screen, MainScreen)
            assert "No history this run" in str(app.screen.query_one(shown_in).get_option_at_index(0).prompt)
            await pilot.press("escape")
            await wait_until(pilot, lambda: isinstance(app.screen, MainScreen))
        assert [m.render().plain for m in app.screen.query(UserMessage)] == ["hello"]  # nothing typed was sent
    app.store.close()
    assert path.read_bytes() == damaged and not list(path.parent.glob("*corrupt*"))
    store, warning = HistoryStore.open(path)  # the next start sets it aside and starts afresh
    assert warning is not None and "moved it to history.sqlite3.corrupt-" in warning
    (aside,) = path.parent.glob("history.sqlite3.corrupt-*")
    assert aside.read_bytes() == damaged and store.writable and store.list_conversations() == []
    store.close()


async def test_a_conversation_deleted_in_another_instance_is_saved_again_with_the_new_message(
    tokenizer: Tokenizer,
) -> None:
    app, _ = make_app(tokenizer, settings=GREEDY)
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        await send(pilot, "first")
        deleted = app.screen.conversation.id
        other, _ = HistoryStore.open()  # another instance on the same data dir: ctrl+o, d, d
        other.delete_conversation(deleted)
        other.close()
        await send(pilot, "second")
        assert [m.render().plain for m in app.screen.query(UserMessage)] == ["first", "second"]
        assert [r.text for r in replies(app)] == [REPLY, REPLY]
        said = [n.message for n in app._notifications]
        assert any("deleted in another opt-tpu-tui" in line and "new conversation" in line for line in said)
        assert not any("FOREIGN KEY" in line for line in said)
        (summary,) = app.store.list_conversations()
        assert summary.id == app.screen.conversation.id and summary.title == "first"  # (SQLite may reuse the id)
        assert [(t.user, t.assistant) for t in app.store.load(summary.id)] == [("first", REPLY), ("second", REPLY)]


async def test_search_finds_an_edited_away_message_and_opens_its_variant(tokenizer: Tokenizer) -> None:
    store, _ = HistoryStore.open()
    cid = store.create_conversation("plans")
    chats = [(0, "plans", "ok"), (1, "visit the kiwi farm", "Sure."), (1, "visit the museum", "Fine.")]
    for position, user, reply in chats:
        store.save_reply(store.start_turn(cid, position, user), reply, complete=True)  # the last edits message 2
    store.close()
    app, _ = make_app(tokenizer, settings=GREEDY)
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        await search_for(pilot, "kiwi")
        search = app.screen
        assert [(hit.conversation_id, hit.turn, hit.field) for hit in search.hits] == [(cid, 1, "user")]
        assert "turn 2 · you · another variant" in shown(search.query_one("#search-results"))
        await pilot.press("enter")
        await wait_until(pilot, lambda: isinstance(app.screen, MainScreen) and app.screen.conversation.id == cid)
        await pilot.pause()
        messages = [str(m.render()) for m in app.screen.query(UserMessage)]
        assert messages == ["plans", "visit the kiwi farm"]  # the variant that holds the match is shown
        assert app.screen.query(UserMessage)[1].has_class("-found")
        assert [t.user for t in app.screen.conversation.turns] == messages
        assert app.store.variants(cid) == {1: (1, 2)}  # the other one is kept, a variant in its turn
