"""A reply on screen is the model's text, every character: nothing read as Markdown or HTML (issue 22, item 9)."""

from __future__ import annotations

import pytest
from rich.console import Console
from tiny import train_tokenizer
from tui_support import make_app, ready, script_ids, send, shown

from opt_tpu_tui.config import Settings
from opt_tpu_tui.sampling import SamplingSettings
from opt_tpu_tui.tokenizer import Tokenizer
from opt_tpu_tui.tui.widgets.conversation import ReplyRows, ReplyView, reply_text

pytestmark = pytest.mark.anyio

HOSTILE = (
    "Call __init__ with 2*3*4 and _x_, see [link](http://x.y) or <b>bold</b> &amp; `tick`\n"
    "# not a heading\n"
    "> not a quote\n"
    "- not a list\n"
    "```python\n"
    "def f(a):\n"
    "    return a**2  # <i>\n"
    "```\n"
    "| a | b |\n"
    "|---|---|\n"
    "~~gone~~ \\*escaped\\*"
)
GREEDY = Settings(sampling=SamplingSettings(temperature=0.0, repetition_penalty=1.0, max_new_tokens=400))


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    return Tokenizer.from_dir(train_tokenizer(tmp_path_factory.mktemp("tok")))


def unwrapped(text: str) -> str:
    """``text`` without its white space: a wrapped row loses the space it broke at, nothing else may go."""
    return "".join(text.split())


def test_reply_text_keeps_every_character() -> None:
    assert reply_text(HOSTILE).plain == HOSTILE
    console = Console(width=200, record=True)
    console.print(reply_text(HOSTILE))
    assert unwrapped(console.export_text()) == unwrapped(HOSTILE)


def test_a_fenced_block_is_coloured_and_keeps_its_characters() -> None:
    text = reply_text("see\n```python\ndef f():\n\treturn 1\n```\nend")
    assert text.plain == "see\n```python\ndef f():\n\treturn 1\n```\nend"
    assert any(span.start >= len("see\n```python\n") for span in text.spans)  # the body is coloured
    assert not reply_text("```\nplain\n```").spans and not reply_text("```nolang\nx\n```").spans


async def test_the_finished_reply_shows_what_streamed(tokenizer: Tokenizer) -> None:
    script = script_ids(tokenizer, HOSTILE)
    expected = tokenizer.decode(script[:-1]).strip()  # what the model wrote (the scripted tokenizer's own round trip)
    app, _ = make_app(tokenizer, script=script, settings=GREEDY)
    async with app.run_test(size=(100, 50)) as pilot:
        await ready(pilot)
        await send(pilot, "hi")
        view = app.screen.query(ReplyView).last()
        assert view.text == expected and not app.screen.query(ReplyRows)
        rows = [row[1:] for row in shown(view).splitlines()]  # each row after the reply's left bar
        assert unwrapped(expected) == unwrapped("\n".join(rows))
