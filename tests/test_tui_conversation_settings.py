"""A conversation's own settings, driven through the real app: the pane's two scopes, what reaches the
generation for which conversation, saving with the conversation, reopening, and defaults changed later."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from textual.widgets import Input, TextArea
from tiny import train_tokenizer
from tui_support import REPLY, finish, make_app, ready, script_ids, send, shown

from opt_tpu_tui import chat, paths
from opt_tpu_tui.config import DEFAULT_PREAMBLE, Settings, load_settings
from opt_tpu_tui.generation import Generation
from opt_tpu_tui.history import HistoryStore
from opt_tpu_tui.overrides import Overrides
from opt_tpu_tui.sampling import SamplingSettings
from opt_tpu_tui.tokenizer import Tokenizer
from opt_tpu_tui.tui.widgets.status import StatusLine

pytestmark = pytest.mark.anyio

GREEDY = Settings(sampling=SamplingSettings(temperature=0.0, repetition_penalty=1.0, max_new_tokens=200))


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    return Tokenizer.from_dir(train_tokenizer(tmp_path_factory.mktemp("tok")))


@pytest.fixture
def generations(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[SamplingSettings]]:
    """The sampling settings of every generation the chat starts, in order."""
    made: list[SamplingSettings] = []

    class Recording(Generation):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]
            made.append(self.settings)

    monkeypatch.setattr(chat, "Generation", Recording)
    yield made


def reply_tokens(app, tokenizer: Tokenizer) -> list[int]:  # type: ignore[no-untyped-def]
    return tokenizer.encode(" " + app.screen.conversation.turns[-1].assistant, add_bos=False)


def preamble_of(tokenizer: Tokenizer, prompt: list[int]) -> str:
    return tokenizer.decode(prompt).split("\n")[0].strip()


async def edit_conversation(pilot, *, max_new_tokens: str | None = None, temperature: str | None = None,
                            preamble: str | None = None) -> None:  # type: ignore[no-untyped-def]
    """Open the pane on this conversation's scope (f6), type the given values, apply with ctrl+s."""
    app = pilot.app
    await pilot.press("f2")
    if "this conversation" not in str(app.screen.query_one("#settings-scope").render()):
        await pilot.press("f6")
    for name, value in (("max_new_tokens", max_new_tokens), ("temperature", temperature)):
        if value is not None:
            app.screen.query_one(f"#field-{name}", Input).focus()
            await pilot.press("ctrl+u", *value)
    if preamble is not None:
        app.screen.query_one("#field-preamble", TextArea).text = preamble
    await pilot.press("ctrl+s")
    await pilot.pause()
    await pilot.press("f2")  # back to the prompt


async def test_a_conversations_own_settings_reach_its_replies_only_and_come_back_when_reopened(
    tokenizer: Tokenizer, generations: list[SamplingSettings]
) -> None:
    app, backend = make_app(tokenizer, settings=GREEDY)
    async with app.run_test(size=(120, 40)) as pilot:
        await ready(pilot)
        await pilot.press("f2")
        assert "defaults (all conversations)" in shown(app.screen.query_one("#settings-scope"))
        await pilot.press("f6")
        await pilot.pause()
        assert "this conversation" in shown(app.screen.query_one("#settings-scope"))
        assert app.screen.query_one("#field-max_new_tokens", Input).value == "200"  # a new one follows the defaults
        await pilot.press("f2")
        # set before the conversation is saved: kept in memory, saved with it
        await edit_conversation(pilot, max_new_tokens="3", temperature="0.5", preamble="Be terse.")
        assert app.screen.conversation.id is None
        assert (app.settings.sampling, app.settings.preamble) == (GREEDY.sampling, DEFAULT_PREAMBLE)  # defaults kept
        assert "custom" in shown(app.screen.query_one(StatusLine))
        labels = [str(app.screen.query_one(f"#label-{n}").render()) for n in ("max_new_tokens", "top_k", "preamble")]
        assert labels == ["Max new tokens *", "Top-k", "Preamble *"]
        await send(pilot, "first")
        own = app.screen.conversation.id
        assert reply_tokens(app, tokenizer) == script_ids(tokenizer)[:3]
        assert preamble_of(tokenizer, backend.prefills[-1]) == "Be terse."
        assert (generations[-1].temperature, generations[-1].max_new_tokens) == (0.5, 3)
        await pilot.press("ctrl+r")  # regenerating uses them too
        await finish(pilot, 2)
        assert (generations[-1].temperature, generations[-1].max_new_tokens) == (0.5, 3)
        assert preamble_of(tokenizer, backend.prefills[-1]) == "Be terse."
        assert app.store.conversation_settings(own) == (
            Overrides({"max_new_tokens": 3, "temperature": 0.5}, "Be terse."), None
        )  # fmt: skip
        assert not paths.settings_file().exists() or load_settings()[0].sampling == SamplingSettings()

        await pilot.press("ctrl+n")  # a new conversation follows the defaults
        await pilot.pause()
        assert "custom" not in shown(app.screen.query_one(StatusLine))
        await send(pilot, "second")
        assert app.screen.conversation.turns[-1].assistant == REPLY
        assert preamble_of(tokenizer, backend.prefills[-1]) == DEFAULT_PREAMBLE
        assert generations[-1] == GREEDY.sampling
        other = app.screen.conversation.id

        await pilot.press("ctrl+o", "down", "enter")  # the list is newest first: the first conversation is second
        await pilot.pause()
        assert app.screen.conversation.id == own
        assert "custom" in shown(app.screen.query_one(StatusLine))
        await pilot.press("f2")
        assert app.screen.query_one("#field-max_new_tokens", Input).value == "3"
        assert app.screen.query_one("#field-preamble", TextArea).text == "Be terse."
        await pilot.press("f2")
        meter = app.screen.query_one(StatusLine).context_used  # counted with its own preamble
        await send(pilot, "France")  # one token, so the prompt is exactly the meter's count
        assert len(backend.prefills[-1]) == meter
        assert reply_tokens(app, tokenizer) == script_ids(tokenizer)[:3]
        assert (generations[-1].temperature, preamble_of(tokenizer, backend.prefills[-1])) == (0.5, "Be terse.")

        await app.screen.open_conversation(other)  # as a search's match opens it
        await pilot.pause()
        assert "custom" not in shown(app.screen.query_one(StatusLine))
        await send(pilot, "fourth")
        assert generations[-1] == GREEDY.sampling
    assert app.store.conversation_settings(other) == (Overrides(), None)


async def test_a_default_changed_later_reaches_a_conversation_that_did_not_set_that_field(
    tokenizer: Tokenizer, generations: list[SamplingSettings]
) -> None:
    app, backend = make_app(tokenizer, settings=GREEDY)
    async with app.run_test(size=(120, 40)) as pilot:
        await ready(pilot)
        await send(pilot, "hello")
        await edit_conversation(pilot, temperature="0.5")
        cid = app.screen.conversation.id
        assert app.store.conversation_settings(cid) == (Overrides({"temperature": 0.5}), None)
        await pilot.press("f2", "f6")  # back to the defaults' scope
        await pilot.pause()
        assert "defaults" in shown(app.screen.query_one("#settings-scope"))
        assert app.screen.query_one("#field-temperature", Input).value == "0.00"  # the default, not the chat's
        app.screen.query_one("#field-max_new_tokens", Input).focus()
        await pilot.press("ctrl+u", "4", "enter")
        await pilot.pause()
        assert [n.message for n in app._notifications][-1] == "Settings saved: they apply from the next reply"
        app.screen.query_one("#field-temperature", Input).focus()
        await pilot.press("ctrl+u", "0", ".", "3", "enter")  # a default this conversation does not follow
        await pilot.pause()
        assert "this conversation keeps its own temperature (f6)" in [n.message for n in app._notifications][-1]
        assert app.settings.sampling.max_new_tokens == 4 and load_settings()[0].sampling.max_new_tokens == 4
        await pilot.press("f2")
        await send(pilot, "again")
        assert (generations[-1].temperature, generations[-1].max_new_tokens) == (0.5, 4)
        assert reply_tokens(app, tokenizer) == script_ids(tokenizer)[:4]
        assert app.store.conversation_settings(cid) == (Overrides({"temperature": 0.5}), None)  # not copied in

        await edit_conversation(pilot, temperature="0.3")  # the default's value: follows the default again
        assert app.store.conversation_settings(cid) == (Overrides(), None)
        assert "custom" not in shown(app.screen.query_one(StatusLine))
        await edit_conversation(pilot, max_new_tokens="2", preamble="Short.")
        assert app.store.conversation_settings(cid)[0].names == {"max_new_tokens", "preamble"}
        await pilot.press("f2", "f7")  # drops them all
        await pilot.pause()
        assert app.store.conversation_settings(cid) == (Overrides(), None)
        assert app.screen.query_one("#field-max_new_tokens", Input).value == "4"
        assert "*" not in str(app.screen.query_one("#label-preamble").render())
        await pilot.press("f2")
        await send(pilot, "once more")
        assert generations[-1] == SamplingSettings(temperature=0.3, repetition_penalty=1.0, max_new_tokens=4)
        assert preamble_of(tokenizer, backend.prefills[-1]) == DEFAULT_PREAMBLE


async def test_a_conversation_with_bad_stored_settings_opens_on_the_defaults_with_a_warning(
    tokenizer: Tokenizer, generations: list[SamplingSettings]
) -> None:
    store, _ = HistoryStore.open()
    cid = store.create_conversation("old")
    store.add_turn(cid, "old")
    store.set_conversation_settings(cid, Overrides({"top_k": 5}))
    store._db.execute("UPDATE conversations SET settings = '{\"sampling\": {\"temperature\": 99}' WHERE id = ?", (cid,))
    store._db.commit()
    store.close()
    app, _ = make_app(tokenizer, settings=GREEDY)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        await app.screen.open_conversation(cid)
        await pilot.pause()
        assert any("not valid JSON" in n.message and f"conversation {cid}" in n.message for n in app._notifications)
        await send(pilot, "new")
        assert generations[-1] == GREEDY.sampling


async def test_the_custom_marker_leaves_the_speed_its_room_at_80_columns(tokenizer: Tokenizer) -> None:
    app, _ = make_app(tokenizer, settings=GREEDY)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        await edit_conversation(pilot, preamble="Mine.")
        await send(pilot, "Hello")
        app.screen.pane = "hidden"
        await pilot.pause()
        line = shown(app.screen.query_one(StatusLine))
        assert "custom" in line and "tok/s" in line and line.rstrip().endswith("f1 help")
