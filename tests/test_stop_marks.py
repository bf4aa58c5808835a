"""How a reply ended is said, in words (issue 22, item 11): a mark under the reply in the UI, words in -p's
stats line, and the settings form's errors in the form's own vocabulary, not covered by a toast."""

from __future__ import annotations

import pytest
from textual.widgets import Input
from textual.widgets._toast import Toast
from tiny import train_tokenizer
from tui_support import make_app, ready, script_ids, send, shown

from opt_tpu_tui.cli import format_stats
from opt_tpu_tui.config import Settings
from opt_tpu_tui.generation import GenerationStats
from opt_tpu_tui.sampling import SamplingSettings
from opt_tpu_tui.tokenizer import Tokenizer
from opt_tpu_tui.tui.widgets.conversation import ReplyView

pytestmark = pytest.mark.anyio


def greedy(max_new_tokens: int) -> Settings:
    return Settings(sampling=SamplingSettings(temperature=0.0, repetition_penalty=1.0, max_new_tokens=max_new_tokens))


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    return Tokenizer.from_dir(train_tokenizer(tmp_path_factory.mktemp("tok")))


@pytest.mark.parametrize(
    "reason, words",
    [("max_new_tokens", "max new tokens"), ("stop_string", "stop string"), ("context", "context full"),
     ("eos", "end of text"), ("cancelled", "stopped")],
)  # fmt: skip
def test_the_stats_line_says_how_the_reply_ended_in_words(reason: str, words: str) -> None:
    assert format_stats(GenerationStats(stop_reason=reason)).endswith(f"stop: {words}]")


@pytest.mark.parametrize(
    "text, eos, limit, context, mark",
    [
        ("and so on " * 20, False, 8, 4096, "■ max new tokens"),
        ("and so on " * 100, False, 400, 128, "■ context full"),
        ("Fine, thanks.\nUser: and you?", False, 200, 4096, "■ stop string"),
        ("Fine, thanks.", True, 200, 4096, None),  # the model's own end: no mark
    ],
    ids=["max-new-tokens", "context", "stop-string", "eos"],
)
async def test_a_reply_is_marked_with_how_it_ended(
    tokenizer: Tokenizer, text: str, eos: bool, limit: int, context: int, mark: str | None
) -> None:
    app, backend = make_app(tokenizer, script=script_ids(tokenizer, text, eos=eos), settings=greedy(limit))
    backend.context_length = context
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        await send(pilot, "France")
        drawn = shown(app.screen.query(ReplyView).last())
        if mark is None:
            assert "■" not in drawn
        else:
            assert mark in drawn and "stopped" not in drawn


async def test_a_settings_error_names_the_field_as_the_form_does_and_no_toast_covers_it(tokenizer: Tokenizer) -> None:
    app, _ = make_app(tokenizer, settings=greedy(200))
    async with app.run_test(size=(120, 40)) as pilot:
        await ready(pilot)
        await pilot.press("f2")
        field = app.screen.query_one("#field-max_new_tokens", Input)
        field.value = "0"
        field.focus()
        await pilot.press("enter")
        await pilot.pause()
        error = app.screen.query_one("#settings-error")
        assert error.display and "max new tokens must be between 1 and" in str(error.render())
        assert "max_new_tokens" not in str(error.render())
        assert not app.screen.query(Toast) and not app._notifications


async def test_a_reopened_reply_carries_the_mark_it_ended_with(tokenizer: Tokenizer) -> None:
    """How a reply ended is saved with it: reopening the conversation shows the same mark."""
    script = script_ids(tokenizer, "and so on " * 20, eos=False)
    app, _ = make_app(tokenizer, script=script, settings=greedy(8))
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        await send(pilot, "France")
        assert "■ max new tokens" in shown(app.screen.query(ReplyView).last())
        conversation = app.screen.conversation.id
    app, _ = make_app(tokenizer, script=script, settings=greedy(8))  # the next session, as from the conversation list
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        await app.screen.open_conversation(conversation)
        await pilot.pause()
        assert "■ max new tokens" in shown(app.screen.query(ReplyView).last())
