"""The real ``opt-tpu-tui`` console script in tmux: terminal size, key bursts, hostile model output.

These are what users over SSH on slow boxes hit (issue 9): a window that is not
80x24, keys arriving many to a read (typed ahead while the box is busy), and a model
whose output holds terminal escapes. Everything is checked on what tmux shows and
keeps (screen, pane title, paste buffers) and on the files the app writes, never on
the app's internals. The app runs from the tree this test process imports
(tmux.tree_under_test), with settings and history under the test's tmp dirs.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import tmux
from hostile import CLIPBOARD, REPLY, TITLE, VISIBLE, make_hostile_model
from tiny import make_model

from opt_tpu_tui import paths
from opt_tpu_tui.chat import Turn
from opt_tpu_tui.history import HistoryStore

pytestmark = pytest.mark.skipif(not tmux.available(), reason="needs tmux and the installed opt-tpu-tui console script")

SCRIPTED_APP = Path(__file__).parent / "scripted_app.py"
READY = "· ready ·"
PLACEHOLDER = "Message · enter sends"  # the empty prompt box
FOOTER_WORDS = ("Send", "Stop", "Regen", "New", "Chats")
STATS_LABEL = "Backend"  # first row of the stats pane
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # C0 but \t and \n, DEL, C1


def write_settings(**sampling: object) -> None:
    """Greedy, short replies, so a reply is over in well under a second on the tiny models."""
    values = {"max_new_tokens": 8, "temperature": 0.0, "repetition_penalty": 1.0, **sampling}
    paths.settings_file().parent.mkdir(parents=True, exist_ok=True)
    paths.settings_file().write_text(json.dumps({"sampling": values}))


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model(tmp_path_factory.mktemp("tmux") / "tiny-opt")


@pytest.fixture(scope="module")
def hostile_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_hostile_model(tmp_path_factory.mktemp("tmux") / "hostile-opt")


def tui(model: Path) -> list[str]:
    return [tmux.SCRIPT, "--model", str(model), "--backend", "cpu"]


def footer_row(lines: list[str]) -> int | None:
    """The row holding the key footer (most of FOOTER_WORDS), or None."""
    rows = [i for i, line in enumerate(lines) if sum(re.search(rf"\b{w}\b", line) is not None for w in FOOTER_WORDS) >= 3]
    return rows[-1] if len(rows) == 1 else None


def laid_out(height: int) -> Callable[[list[str]], bool]:
    """The chat is ready, its footer is on the last of ``height`` rows, and the prompt box shows once."""

    def check(lines: list[str]) -> bool:
        text = "\n".join(lines)
        return (
            len(lines) == height and READY in text and footer_row(lines) == height - 1 and text.count(PLACEHOLDER) == 1
        )

    return check


def quit_app(term: tmux.Tmux, key: str = "C-q") -> None:
    """Quit with ``key`` (ctrl+q in the UI, ctrl+d in ``-c``) and see the process exit cleanly."""
    term.keys(key)
    term.wait_for(lambda s: "EXIT=0" in s, timeout=20)


# a. size


def test_layout_follows_the_window_size(chat_model: Path) -> None:
    write_settings()
    with tmux.Tmux("size") as term:
        term.start(tui(chat_model), 120, 40)
        lines = term.wait_for_lines(laid_out(40))
        status = next(i for i, line in enumerate(lines) if READY in line)
        prompt = next(i for i, line in enumerate(lines) if PLACEHOLDER in line)
        beside = [i for i, line in enumerate(lines) if STATS_LABEL in line and line.index(STATS_LABEL) >= 60]
        assert beside and status <= beside[0] <= prompt, "the stats pane should sit beside the chat:\n" + "\n".join(lines)
        assert max(len(line) for line in lines) > 100  # drawn across the window, not in an 80-column corner

        term.resize(100, 30)
        term.wait_for_lines(laid_out(30))
        term.resize(60, 15)
        lines = term.wait_for_lines(laid_out(15))
        assert all(len(line) <= 60 for line in lines)

        term.resize(50, 12)
        term.wait_for(lambda s: "too small" in s.lower())
        term.resize(80, 24)  # and back: the chat returns
        term.wait_for_lines(laid_out(24))
        quit_app(term)


# b. key bursts


def sent(term: tmux.Tmux, text: str) -> None:
    """Wait until ``text`` is in the transcript, its reply is done and the prompt box is empty again."""
    first_line = text.split("\n")[0]
    term.wait_for(lambda s: first_line in s and READY in s and PLACEHOLDER in s, timeout=60)


def saved_turns() -> list[Turn]:
    """Every turn in the history, conversation by conversation."""
    store, warning = HistoryStore.open()
    assert warning is None
    try:
        return [turn for c in store.list_conversations() for turn in store.load(c.id)]
    finally:
        store.close()


def saved_user_messages() -> list[str]:
    return [turn.user for turn in saved_turns()]


def test_a_burst_of_typed_keys_sends_exactly_what_was_typed(chat_model: Path) -> None:
    write_settings()
    with tmux.Tmux("burst") as term:
        term.start(tui(chat_model), 100, 30)
        term.wait_for(lambda s: READY in s)
        term.keys("the quick brown fox jumps", "Enter")  # one send-keys: one burst, Enter included
        sent(term, "the quick brown fox jumps")
        term.keys("aaa", "C-j", "bbx", "BSpace", "b", "C-j", "ccc", "Enter")
        screen = term.wait_for(lambda s: "ccc" in s and READY in s and PLACEHOLDER in s)
        assert "bbx" not in screen
        quit_app(term)
    assert saved_user_messages() == ["the quick brown fox jumps", "aaa\nbbb\nccc"]


def test_a_burst_into_a_settings_field_is_saved(chat_model: Path) -> None:
    write_settings(max_new_tokens=128)
    with tmux.Tmux("settings") as term:
        term.start(tui(chat_model), 120, 40)
        term.wait_for(lambda s: READY in s)
        term.keys("F2")
        term.wait_for(lambda s: "Max new tokens" in s)
        term.keys("BSpace", "BSpace", "BSpace", "BSpace", "77", "Enter")
        term.wait_for(lambda s: "Settings saved" in s)
        quit_app(term)
    assert json.loads(paths.settings_file().read_text())["sampling"]["max_new_tokens"] == 77


def test_a_conversations_own_setting_is_saved_with_it_and_comes_back(chat_model: Path) -> None:
    """f6 turns the pane to this conversation; its value goes into the history, not the settings file."""
    write_settings()  # max_new_tokens 8
    with tmux.Tmux("own-settings") as term:
        term.start(tui(chat_model), 80, 24)
        term.wait_for(lambda s: READY in s)
        term.keys("F2")
        term.wait_for(lambda s: "Scope: defaults (all conversations)" in s)
        term.keys("F6")
        term.wait_for(lambda s: "Scope: this conversation" in s)
        term.keys("BSpace", "BSpace", "BSpace", "3", "C-s")
        term.wait_for(lambda s: "Max new tokens *" in s)
        term.keys("F2")
        term.wait_for(lambda s: "· custom ·" in s and PLACEHOLDER in s)
        term.keys("hello", literal=True)
        term.wait_for(lambda s: "hello" in s)
        term.keys("Enter")
        sent(term, "hello")
        quit_app(term)
    store, _ = HistoryStore.open()
    (conversation,) = store.list_conversations()
    own, warning = store.conversation_settings(conversation.id)
    store.close()
    assert (dict(own.sampling), own.preamble, warning) == ({"max_new_tokens": 3}, None, None)
    assert json.loads(paths.settings_file().read_text())["sampling"]["max_new_tokens"] == 8
    with tmux.Tmux("own-settings-reopen") as term:
        term.start(tui(chat_model), 80, 24)
        screen = term.wait_for(lambda s: READY in s)
        assert "custom" not in screen  # a new conversation follows the defaults
        term.keys("C-o")
        term.wait_for(lambda s: "Conversations" in s)
        term.keys("Enter")
        term.wait_for(lambda s: "· custom ·" in s and "hello" in s)
        quit_app(term)



def start_chat(term: tmux.Tmux, model: Path, width: int, height: int) -> None:
    """The chat over ``model`` in a ``width`` x ``height`` window, ready for keys."""
    term.start(tui(model), width, height)
    term.wait_for(lambda s: READY in s)


def send_two(term: tmux.Tmux) -> None:
    """Two messages typed and sent one by one (the messages list then has something to go up to)."""
    for text in ("first words", "second words"):
        term.keys(text, literal=True)
        term.wait_for(lambda s, text=text: text in s)
        term.keys("Enter")
        sent(term, text)


def settings_file_sampling() -> dict[str, object]:
    return json.loads(paths.settings_file().read_text())["sampling"]


def test_a_burst_that_opens_the_messages_list_goes_on_in_it(chat_model: Path) -> None:
    """ctrl+g up enter in one burst: up and enter pick message 1 to edit; the draft in the prompt is not sent."""
    write_settings()
    with tmux.Tmux("burst-messages") as term:
        start_chat(term, chat_model, 80, 24)
        send_two(term)
        term.keys("draft text", literal=True)
        term.wait_for(lambda s: "draft text" in s)
        term.keys("C-g", "Up", "Enter")
        screen = term.wait_for(lambda s: "editing message 1" in s and "Messages ·" not in s)
        assert "draft text" not in screen
        term.keys("Escape")  # the edit left unsent: the draft comes back
        term.wait_for(lambda s: "draft text" in s and "editing message" not in s)
        quit_app(term)
    assert saved_user_messages() == ["first words", "second words"]


def test_a_burst_that_opens_search_types_into_the_search_box(chat_model: Path) -> None:
    write_settings()
    with tmux.Tmux("burst-search") as term:
        start_chat(term, chat_model, 80, 24)
        term.keys("C-f", "hello")
        term.wait_for(lambda s: "Search chats" in s and "No conversation holds that." in s)
        query = [line for line in term.lines() if "hello" in line]
        assert len(query) == 1, term.screen()  # in the search box, not also in the prompt behind it
        term.keys("Escape")
        term.wait_for(lambda s: "Search chats" not in s and PLACEHOLDER in s)  # the prompt is still empty
        quit_app(term)


def test_a_burst_that_moves_to_the_next_settings_field_types_into_it(chat_model: Path) -> None:
    write_settings()  # max_new_tokens 8, temperature 0
    with tmux.Tmux("burst-tab") as term:
        start_chat(term, chat_model, 120, 40)
        term.keys("F2")
        term.wait_for(lambda s: "Max new tokens" in s)
        term.keys("Tab", "C-u", "2", "Enter")
        term.wait_for(lambda s: "Settings saved" in s)
        quit_app(term)
    sampling = settings_file_sampling()
    assert (sampling["max_new_tokens"], sampling["temperature"]) == (8, 2.0)


def test_a_burst_that_opens_the_messages_list_from_the_settings_pane_leaves_the_settings_alone(
    chat_model: Path,
) -> None:
    """At 80 columns the pane covers the chat; ctrl+g up enter edits message 1 and steps no hidden field."""
    write_settings()
    with tmux.Tmux("burst-settings-messages") as term:
        start_chat(term, chat_model, 80, 24)
        send_two(term)
        term.keys("F2")
        term.wait_for(lambda s: "Max new tokens" in s)
        term.keys("C-g", "Up", "Enter")
        screen = term.wait_for(lambda s: "editing message 1" in s and "Messages ·" not in s)
        assert "Settings saved" not in screen
        quit_app(term)
    assert settings_file_sampling()["max_new_tokens"] == 8


def test_a_burst_in_the_conversation_list_asks_before_deleting_the_one_moved_to(chat_model: Path) -> None:
    write_settings()
    store, _ = HistoryStore.open()
    for title in ("older chat", "newer chat"):
        store.save_reply(store.add_turn(store.create_conversation(title), title), "a reply", complete=True)
    store.close()
    with tmux.Tmux("burst-delete") as term:
        start_chat(term, chat_model, 80, 24)
        term.keys("C-o")
        term.wait_for(lambda s: "Conversations ·" in s)
        term.keys("Down", "d")
        term.wait_for(lambda s: "Delete “older chat”? d again deletes it" in s)
        term.keys("d")
        term.wait_for(lambda s: "Conversation deleted" in s)
        quit_app(term)
    assert saved_user_messages() == ["newer chat"]


def test_an_escape_in_a_burst_is_a_key_of_its_own(chat_model: Path) -> None:
    """Over SSH escape and the next keys can arrive in one read: Textual 8 took them for alt+key (or dropped
    the escape before a control key), so escape ctrl+f hello left the list open and hello nowhere."""
    write_settings()
    with tmux.Tmux("burst-escape") as term:
        start_chat(term, chat_model, 80, 24)
        term.keys("C-o")
        term.wait_for(lambda s: "Conversations ·" in s)
        term.keys("Escape", "C-f", "hello")  # one send-keys: one read
        term.wait_for(lambda s: "Search chats" in s and "hello" in s)
        term.keys("Escape", "abc")
        screen = term.wait_for(lambda s: "Search chats" not in s and "abc" in s)
        assert PLACEHOLDER not in screen  # typed into the prompt
        quit_app(term)


def test_the_settings_pane_keeps_the_focus_visible_when_the_window_narrows(chat_model: Path) -> None:
    """The pane beside the chat holds the focus; narrowed below 100 columns it covers the chat, so keys land in sight."""
    write_settings()
    with tmux.Tmux("narrow-focus") as term:
        start_chat(term, chat_model, 120, 40)
        term.keys("F2")
        term.wait_for(lambda s: "Max new tokens" in s)
        term.resize(60, 15)
        term.wait_for_lines(lambda lines: len(lines) == 15 and READY not in "\n".join(lines))  # the chat is covered
        term.keys("BSpace", "BSpace", "42")
        term.wait_for(lambda s: re.search(r"Max new tokens +42\b", s) is not None)  # typed where it shows
        term.keys("Enter")
        term.wait_for(lambda s: "Settings saved" in s)
        term.keys("Escape")  # closes the pane: the chat and its empty prompt are back
        term.wait_for(lambda s: READY in s and PLACEHOLDER in s and "Max new tokens" not in s)
        quit_app(term)
    assert settings_file_sampling()["max_new_tokens"] == 42


# c. hostile model output


def run_prompt(model: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    argv = [tmux.SCRIPT, "-p", "hi", "--model", str(model), "--backend", "cpu", "--temperature", "0", *extra]
    return subprocess.run(argv, env={**os.environ, **tmux.app_env()}, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("raw", [False, True], ids=["chat", "raw"])
def test_prompt_mode_writes_no_control_characters(hostile_model: Path, raw: bool) -> None:
    result = run_prompt(hostile_model, *(["--raw"] if raw else []))
    assert result.returncode == 0, result.stderr
    assert VISIBLE in result.stdout
    assert not CONTROL.findall(result.stdout), repr(result.stdout)


def assert_terminal_untouched(term: tmux.Tmux) -> None:
    assert term.title() == tmux.KNOWN_TITLE, "the model's OSC 0 retitled the terminal"
    assert term.buffers() == "", "the model's OSC 52 wrote the clipboard"


def test_the_tmux_checks_see_what_hostile_bytes_do() -> None:
    """The control: the reply's bytes, printed raw, do change the title and the buffers (so the checks can fail)."""
    with tmux.Tmux("control") as term:
        term.start(["printf", "%s\\n", REPLY])
        term.wait_for(lambda s: "EXIT=0" in s)
        assert term.title() == TITLE
        assert CLIPBOARD in term("show-buffer")


def test_line_chat_shows_hostile_output_defanged(hostile_model: Path) -> None:
    write_settings()
    with tmux.Tmux("chat") as term:
        term.start([tmux.SCRIPT, "-c", "--model", str(hostile_model), "--backend", "cpu"])
        term.wait_for(lambda s: "you>" in s)
        term.keys("hi", "Enter")
        # the reply, then the next prompt (a raw erase-screen in the reply would leave only that one)
        term.wait_for(lambda s: VISIBLE in s and s.rstrip().endswith("you>"))
        assert_terminal_untouched(term)
        quit_app(term, "C-d")


def test_the_ui_shows_hostile_output_defanged_live_and_reopened(hostile_model: Path) -> None:
    write_settings()
    with tmux.Tmux("ui") as term:
        term.start(tui(hostile_model), 100, 30)
        term.wait_for(lambda s: READY in s)
        term.keys("hi", literal=True)  # typed, then sent: bursts are test_a_burst_*'s concern
        term.wait_for(lambda s: " hi " in s)
        term.keys("Enter")
        term.wait_for(lambda s: VISIBLE in s and READY in s and PLACEHOLDER in s)
        assert_terminal_untouched(term)
        quit_app(term)

    with tmux.Tmux("ui-reopen") as term:
        term.start(tui(hostile_model), 100, 30)
        term.wait_for(lambda s: READY in s)
        term.keys("C-o")
        term.wait_for(lambda s: "Conversations" in s)  # the list of saved chats, newest first
        term.keys("Enter")
        term.wait_for(lambda s: VISIBLE in s and READY in s)
        assert_terminal_untouched(term)
        quit_app(term)


# e. copy and export


def copy_a_reply(term: tmux.Tmux, model: Path, width: int, height: int) -> None:
    """Start the UI, send a message, and once the reply is done copy it (f5): its notice shows."""
    write_settings()
    term.start(tui(model), width, height)
    term.wait_for(lambda s: READY in s)
    term.keys("hello there", literal=True)
    term.wait_for(lambda s: "hello there" in s)
    term.keys("Enter")
    sent(term, "hello there")
    assert term.buffers() == ""
    term.keys("F5")
    term.wait_for(lambda s: "Copied the last" in s)


def test_copy_reaches_the_terminal_clipboard_and_the_fallback_file(chat_model: Path) -> None:
    with tmux.Tmux("copy") as term:
        copy_a_reply(term, chat_model, 100, 30)
        (reply,) = [turn.assistant for turn in saved_turns()]
        assert reply and term("show-buffer") == reply  # OSC 52, as tmux took it
        assert (paths.data_dir() / "clipboard.txt").read_text() == reply
        quit_app(term)


def test_a_notice_leaves_the_terminal_when_it_times_out(chat_model: Path) -> None:
    """The copy's notice (6 s) is gone from the terminal a few seconds after its timeout, after a reply.

    Textual had dropped it, but its cells stayed drawn until a resize: the hidden side
    pane's stats, updated every second, had its layout map rebuilt between the notice's
    removal and the next layout, which then saw nothing to repaint (tui/compositor.py).
    """
    with tmux.Tmux("notice") as term:
        copy_a_reply(term, chat_model, 80, 24)
        term.wait_for(lambda s: "Copied the last" not in s and "clipboard.txt" not in s, timeout=6 + 4)
        quit_app(term)


def test_what_streaming_left_on_the_screen_is_what_a_full_repaint_draws() -> None:
    """After a reply long enough to scroll the transcript many times, tmux shows what Textual draws afresh.

    The app writes only what changed since its copy of the screen, and moves scrolled
    rows with the terminal's scroll region (tui/terminal_copy.py). Were that copy ever
    wrong, stale cells would stay on the screen. A resize makes Textual repaint every
    cell as it means them: the screen, colours too, must be the same before and after.
    The reply streams at a box's pace (a scripted backend, 300 tokens a second).
    """
    with tmux.Tmux("copy") as term:
        term.start([sys.executable, str(SCRIPTED_APP), "--tokens", "1200", "--rate", "300"], 64, 18)
        term.wait_for_lines(laid_out(18))
        term.keys("Tell me a long story", "Enter")

        def coloured() -> str:
            return term("capture-pane", "-p", "-e", "-t", term.target)

        term.wait_for(lambda s: READY not in s)
        term.wait_for(lambda s: READY in s, timeout=60)  # the reply has ended (the prompt scrolled away long ago)
        streamed = ""
        while streamed != (streamed := coloured()):  # and its last frame is drawn
            time.sleep(0.5)
        term.resize(72, 18)
        time.sleep(1)
        term.resize(64, 18)
        deadline = time.monotonic() + 10
        while (repainted := coloured()) != streamed and time.monotonic() < deadline:
            time.sleep(0.2)
        assert repainted.split("\n") == streamed.split("\n"), "the streamed screen differs from a full repaint of it"
        quit_app(term)


# f. search


def test_search_opens_an_old_conversation_at_the_match(chat_model: Path) -> None:
    """ctrl+f, a query, enter: the chat shows the old message that matched, far back in a long conversation."""
    write_settings()
    store, _ = HistoryStore.open()
    old = store.create_conversation("a long chat")
    for i in range(45):
        user = "where did we put the Needle_7 form?" if i == 2 else f"message {i}"
        store.save_reply(store.add_turn(old, user), f"reply {i}", complete=True)
    store.save_reply(store.add_turn(store.create_conversation("newer"), "newer"), "nothing here", complete=True)
    store.close()
    with tmux.Tmux("search") as term:
        term.start(tui(chat_model), 80, 24)
        term.wait_for(lambda s: READY in s)
        term.keys("C-f")
        term.wait_for(lambda s: "Search chats" in s)
        term.keys("needle_7", literal=True)
        screen = term.wait_for(lambda s: "a long chat · turn 3 · you" in s)
        assert "Needle_7" in screen  # the snippet, with the match
        term.keys("Enter")
        screen = term.wait_for(lambda s: "where did we put the Needle_7 form?" in s and "Search chats" not in s)
        assert "message 44" not in screen  # opened at the match, not at the end
        quit_app(term)


def test_edit_an_earlier_message_and_flip_back(chat_model: Path) -> None:
    """ctrl+g, ↑, enter, a new text, enter: the edit is answered, the old turns kept as a variant; ← brings them back."""
    write_settings()
    with tmux.Tmux("edit") as term:
        term.start(tui(chat_model), 80, 24)
        term.wait_for(lambda s: READY in s)
        for text in ("first words", "second words"):
            term.keys(text, literal=True)
            term.wait_for(lambda s, text=text: text in s)
            term.keys("Enter")
            sent(term, text)
        term.keys("C-g")
        term.wait_for(lambda s: "Messages" in s and "second words" in s)
        term.keys("Up", "Enter")
        term.wait_for(lambda s: "editing message 1" in s)
        term.keys("C-u")
        term.keys("edited words", literal=True)
        term.wait_for(lambda s: "edited words" in s)
        term.keys("Enter")
        screen = term.wait_for(lambda s: "‹2/2› variants" in s and READY in s and PLACEHOLDER in s)
        assert "second words" not in screen
        assert saved_user_messages() == ["edited words"]
        term.keys("C-g")
        term.wait_for(lambda s: "Messages ·" in s and "‹2/2› edited words" in s)
        term.keys("Left", "Escape")
        term.wait_for(lambda s: "second words" in s and "Messages" not in s)
        quit_app(term)
    assert saved_user_messages() == ["first words", "second words"]


# g. the mouse


@pytest.mark.parametrize(
    "flag, setting, tracked",
    [([], True, "1"), (["--no-mouse"], True, "0"), ([], False, "0")],
    ids=["default", "flag", "setting"],
)
def test_no_mouse_leaves_the_mouse_to_the_terminal(chat_model: Path, flag: list[str], setting: bool, tracked: str) -> None:
    """tmux knows whether the program in a pane asked for mouse reports (its own selection works when not)."""
    write_settings()
    values = json.loads(paths.settings_file().read_text())
    paths.settings_file().write_text(json.dumps({**values, "mouse": setting}))
    with tmux.Tmux("mouse") as term:
        term.start([*tui(chat_model), *flag], 100, 30)
        term.wait_for(lambda s: READY in s)
        assert term("display-message", "-p", "-t", term.target, "#{mouse_any_flag}").strip() == tracked
        quit_app(term)
    assert json.loads(paths.settings_file().read_text())["mouse"] is setting  # the flag is for one run
