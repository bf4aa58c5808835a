"""The command line's sampling flags and --preamble apply to the UI's run too (issue 22, item 5).

One resolution for every front end (overrides.resolve): the saved defaults, then this
run's command-line values, then the conversation's own settings. The settings pane shows
a command-line value marked "+", and saves it as a default only if the user changes it.
"""

from __future__ import annotations

import json
import sqlite3

import pytest
import tmux
from textual.widgets import Input, TextArea
from tiny import train_tokenizer
from tui_support import make_app, ready, script_ids, send, shown

from opt_tpu_tui import cli, paths
from opt_tpu_tui.config import DEFAULT_PREAMBLE, Settings, load_settings, save_settings
from opt_tpu_tui.demo import DEMO_MODEL_DIR
from opt_tpu_tui.overrides import Overrides, resolve
from opt_tpu_tui.sampling import SamplingSettings
from opt_tpu_tui.tokenizer import Tokenizer

SAVED = Settings(sampling=SamplingSettings(temperature=0.0, repetition_penalty=1.0, max_new_tokens=200))


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    return Tokenizer.from_dir(train_tokenizer(tmp_path_factory.mktemp("tok")))


def test_the_layers_resolve_in_order_saved_then_command_line_then_conversation() -> None:
    session = Overrides.given({"max_new_tokens": 8, "temperature": None, "top_k": 3}, "From the flag.")
    conversation = Overrides({"top_k": 7})
    sampling, preamble = resolve(SAVED.sampling, SAVED.preamble, session, conversation)
    assert (sampling.max_new_tokens, sampling.temperature, sampling.top_k) == (8, 0.0, 7)
    assert preamble == "From the flag."
    assert resolve(SAVED.sampling, SAVED.preamble) == (SAVED.sampling, SAVED.preamble)
    assert session.without(["top_k", "preamble"]) == Overrides({"max_new_tokens": 8})


def test_a_flag_out_of_range_is_refused_for_the_ui_before_it_starts(monkeypatch, capsys) -> None:
    started = []
    monkeypatch.setattr("opt_tpu_tui.tui.run", lambda *a, **k: started.append(k) or 0)
    assert cli.main(["--top-p", "1.5"]) == 2
    assert not started
    assert "top_p must be between 0.01 and 1, got 1.5" in capsys.readouterr().err
    assert cli.main(["--max-new-tokens", "8", "--preamble", "Terse."]) == 0
    assert started[0]["session"] == Overrides({"max_new_tokens": 8}, "Terse.")


def test_help_says_the_flags_apply_to_this_run_in_the_ui_too(capsys) -> None:
    with pytest.raises(SystemExit):
        cli.main(["-h"])
    text = " ".join(capsys.readouterr().out.split())
    assert "applies to this run only, in -p, -c and the UI alike" in text
    assert "marked +" in text



@pytest.mark.anyio
async def test_the_settings_pane_shows_the_command_lines_value_and_does_not_save_it(tokenizer: Tokenizer) -> None:
    save_settings(SAVED)
    app, backend = make_app(tokenizer, settings=SAVED)
    app.session_settings = Overrides.given({"max_new_tokens": 4}, "Be brief.")  # as cli.main passes it in
    async with app.run_test(size=(120, 40)) as pilot:
        await ready(pilot)
        await send(pilot, "first")
        reply = app.screen.conversation.turns[-1].assistant
        assert tokenizer.encode(" " + reply, add_bos=False) == script_ids(tokenizer)[:4]
        assert tokenizer.decode(backend.prefills[-1]).split("\n")[0].strip() == "Be brief."
        await pilot.press("f2")
        await pilot.pause()
        form = app.screen.query_one("#settings")
        assert "defaults" in shown(form.query_one("#settings-scope"))
        assert form.query_one("#field-max_new_tokens", Input).value == "4"
        assert form.query_one("#field-preamble", TextArea).text == "Be brief."
        labels = [str(form.query_one(f"#label-{n}").render()) for n in ("max_new_tokens", "top_k", "preamble")]
        assert labels == ["Max new tokens +", "Top-k", "Preamble +"]
        assert form.query_one("#settings-session").display
        assert "command line" in shown(form.query_one("#settings-session"))
        # another field changed and applied: saved; the command line's values are not
        form.query_one("#field-top_k", Input).focus()
        await pilot.press("ctrl+u", "9", "ctrl+s")
        await pilot.pause()
        saved = load_settings()[0]
        assert (saved.sampling.top_k, saved.sampling.max_new_tokens, saved.preamble) == (9, 200, DEFAULT_PREAMBLE)
        assert form.query_one("#field-max_new_tokens", Input).value == "4"  # still this run's
        # the field changed: saved as the default, and this run follows it
        form.query_one("#field-max_new_tokens", Input).focus()
        await pilot.press("ctrl+u", "6", "ctrl+s")
        await pilot.pause()
        assert load_settings()[0].sampling.max_new_tokens == 6
        assert str(form.query_one("#label-max_new_tokens").render()) == "Max new tokens"
        await pilot.press("f2")
        await send(pilot, "second")
        reply = app.screen.conversation.turns[-1].assistant
        assert tokenizer.encode(" " + reply, add_bos=False) == script_ids(tokenizer)[:6]
        await pilot.press("f2")
        await pilot.pause()
        await pilot.press("f6")  # the conversation's scope shows what it replies with, the run's value marked
        await pilot.pause()
        assert str(form.query_one("#label-preamble").render()) == "Preamble +"
        assert form.query_one("#field-preamble", TextArea).text == "Be brief."
    assert load_settings()[0].preamble == DEFAULT_PREAMBLE


@pytest.mark.skipif(not tmux.available(), reason="needs tmux and the installed opt-tpu-tui console script")
def test_the_ui_started_with_max_new_tokens_8_replies_with_at_most_8_tokens() -> None:
    """End to end, through the console script: the demo model (greedy) writes hundreds of tokens unless stopped."""
    paths.settings_file().parent.mkdir(parents=True, exist_ok=True)
    paths.settings_file().write_text(
        json.dumps({"sampling": {"max_new_tokens": 300, "temperature": 0.0, "repetition_penalty": 1.0}})
    )
    with tmux.Tmux("session-flags") as term:
        term.start([tmux.SCRIPT, "--max-new-tokens", "8"], width=140, height=30)  # the status line holds "first N s"
        term.wait_for(lambda screen: "· ready ·" in screen)
        term.keys("Hello", literal=True)
        term.keys("Enter")
        term.wait_for(lambda screen: "first " in screen.split("\n")[0] and "ready" in screen.split("\n")[0])
        term.keys("C-q")
        term.wait_for(lambda screen: "EXIT=0" in screen)
    with sqlite3.connect(paths.history_file()) as db:
        (reply,) = db.execute("SELECT assistant FROM turns").fetchone()
    ids = Tokenizer.from_dir(DEMO_MODEL_DIR).encode(" " + reply, add_bos=False)
    assert 0 < len(ids) <= 8, reply
    assert json.loads(paths.settings_file().read_text())["sampling"]["max_new_tokens"] == 300  # not saved
