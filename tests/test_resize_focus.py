"""Focus and keys survive the terminal being too small and growing back (issue 22, item 2)."""

from __future__ import annotations

import pytest
from tiny import train_tokenizer
from tui_support import make_app, ready, wait_until

from opt_tpu_tui.tokenizer import Tokenizer
from opt_tpu_tui.tui.widgets.prompt import PromptInput

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    return Tokenizer.from_dir(train_tokenizer(tmp_path_factory.mktemp("tok")))


def footer_keys(app) -> set[str]:  # type: ignore[no-untyped-def]
    """The descriptions of the bindings the footer shows now (those of the focused widget's chain)."""
    return {binding.description for _, binding, enabled, _ in app.screen.active_bindings.values() if binding.show}


@pytest.mark.parametrize("start", [(100, 30), (40, 12)], ids=["shrunk-and-grown", "started-small"])
async def test_typing_goes_to_the_prompt_after_the_terminal_was_too_small(tokenizer: Tokenizer, start: tuple[int, int]) -> None:
    app, _ = make_app(tokenizer)
    async with app.run_test(size=start) as pilot:
        await ready(pilot)
        await pilot.resize_terminal(40, 12)
        await wait_until(pilot, lambda: app.screen.has_class("-too-narrow"))
        await pilot.pause()
        await pilot.resize_terminal(100, 30)
        await wait_until(pilot, lambda: not app.screen.has_class("-too-narrow"))
        await pilot.pause()
        prompt = app.screen.query_one(PromptInput)
        await wait_until(pilot, lambda: app.focused is prompt)
        assert "Send" in footer_keys(app)
        await pilot.press("h", "i")
        assert prompt.text == "hi"
