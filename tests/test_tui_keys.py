"""The way out and the interrupting keys, with Pilot over a scripted backend: ctrl+q in the footer at every
width, ctrl+c (copy, stop, or how to quit), ctrl+z suspends (undo is ctrl+_), the too-small screen.

Before: ctrl+q was in no footer, at 60 columns the footer was cut to "f2 Settin", ctrl+c
did nothing in the UI (the prompt's copy took it, with nothing to copy), ctrl+z was the
prompt's undo, and the "too small" screen did not say how to leave.
"""

from __future__ import annotations

import pytest
from textual.widgets._footer import FooterKey
from tiny import train_tokenizer
from tui_support import REPLY, finish, make_app, ready, script_ids, shown, submit, wait_until

from opt_tpu_tui.config import Settings
from opt_tpu_tui.sampling import SamplingSettings
from opt_tpu_tui.tokenizer import Tokenizer
from opt_tpu_tui.tui.widgets.conversation import ReplyView
from opt_tpu_tui.tui.widgets.prompt import PromptInput

pytestmark = pytest.mark.anyio

WIDTHS = [60, 64, 70, 76, 80, 100, 200]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    return Tokenizer.from_dir(train_tokenizer(tmp_path_factory.mktemp("tok")))


def long_reply_app(tokenizer: Tokenizer):  # type: ignore[no-untyped-def]
    """A reply of REPLY 20 times at 100 tokens/s: long enough to interrupt."""
    settings = Settings(sampling=SamplingSettings(temperature=0.0, repetition_penalty=1.0, max_new_tokens=4096))
    return make_app(tokenizer, script=script_ids(tokenizer, REPLY * 20, eos=False), delay=0.01, settings=settings)


def footer_problems(app, width: int) -> list[str]:  # type: ignore[no-untyped-def]
    """What is wrong with the footer at ``width`` columns: no quit key, or a key not drawn whole."""
    keys = [key for key in app.screen.query(FooterKey) if key.display]
    problems = [] if any(key.action in ("quit", "app.quit") for key in keys) else [f"{width}: no quit key"]
    for key in keys:
        text = shown(key).rstrip()
        if key.region.right > width or text != f"{key.key_display} {key.description}".rstrip():
            problems.append(f"{width}: {key.key_display} {key.description!r} drawn as {text!r} up to {key.region.right}")
    return problems


async def settle(pilot) -> None:  # type: ignore[no-untyped-def]
    for _ in range(3):
        await pilot.pause(0.05)


async def test_the_footer_shows_whole_keys_and_ctrl_q_at_every_width(tokenizer: Tokenizer) -> None:
    app, _ = long_reply_app(tokenizer)
    async with app.run_test(size=(60, 24)) as pilot:
        await ready(pilot)
        problems: list[str] = []
        for state in ("idle", "settings", "replying"):
            if state == "settings":
                await pilot.press("f2")
            if state == "replying":
                await pilot.press("f2")  # closed again
                await submit(pilot, "Tell me a long story")
                await wait_until(pilot, lambda: app.screen.streaming)
            for width in WIDTHS:
                await pilot.resize_terminal(width, 24)
                await settle(pilot)
                problems += [f"{state} {problem}" for problem in footer_problems(app, width)]
        await pilot.press("escape")
    assert problems == []


async def test_ctrl_c_stops_a_reply_as_escape_does(tokenizer: Tokenizer) -> None:
    app, backend = long_reply_app(tokenizer)
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        await submit(pilot, "Tell me a long story")
        await wait_until(pilot, lambda: app.screen.streaming)
        await wait_until(pilot, lambda: len(app.screen.in_flight.reply.turn.assistant) > 20)
        await pilot.press("ctrl+c")
        await finish(pilot, 1)
        turn = app.screen.conversation.turns[-1]
        assert turn.stopped and 0 < len(turn.assistant) < len((REPLY * 20).strip())
        assert "■ stopped" in shown(app.screen.query(ReplyView).last())
        assert app.is_running  # stopped the reply, not the app


async def test_ctrl_c_idle_says_how_to_quit(tokenizer: Tokenizer) -> None:
    app, _ = make_app(tokenizer)
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        await pilot.press("ctrl+c")
        await wait_until(pilot, lambda: any("ctrl+q" in n.message for n in app._notifications))
        assert app.is_running


async def test_ctrl_c_copies_the_text_selected_in_the_prompt(tokenizer: Tokenizer) -> None:
    app, _ = make_app(tokenizer)
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        prompt = app.screen.query_one(PromptInput)
        prompt.insert("copy this part")
        prompt.select_all()
        await pilot.press("ctrl+c")
        await pilot.pause()
        assert app.clipboard == "copy this part" and prompt.text == "copy this part"


async def test_ctrl_z_suspends_and_ctrl_underscore_undoes(tokenizer: Tokenizer, monkeypatch: pytest.MonkeyPatch) -> None:
    """ctrl+z reaches the app's suspend (a no-op headless; tests/test_tui_suspend.py suspends for real);
    the prompt's undo is ctrl+_."""
    app, _ = make_app(tokenizer)
    suspended: list[bool] = []
    monkeypatch.setattr(type(app), "action_suspend_process", lambda self: suspended.append(True))
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        await pilot.press("h", "i")
        await pilot.press("ctrl+z")
        await pilot.pause()
        prompt = app.screen.query_one(PromptInput)
        assert suspended == [True] and prompt.text == "hi"  # not undone
        await pilot.press("ctrl+underscore")
        await pilot.pause()
        assert prompt.text == ""


async def test_the_too_small_screen_says_how_to_quit(tokenizer: Tokenizer) -> None:
    app, _ = make_app(tokenizer)
    async with app.run_test(size=(50, 12)) as pilot:
        await ready(pilot)
        await settle(pilot)
        text = shown(app.screen.query_one("#too-small"))
        assert "too small" in text and "ctrl+q" in text
