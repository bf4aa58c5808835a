"""Running and saving a reply (persist.run_and_save): what is on screen, in the turn and on disk agree."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from scripted import ScriptedBackend
from tiny import train_tokenizer
from tui_support import REPLY, script_ids

from opt_tpu_tui.chat import ChatSession, Conversation
from opt_tpu_tui.history import HistoryStore
from opt_tpu_tui.persist import run_and_save
from opt_tpu_tui.sampling import SamplingSettings
from opt_tpu_tui.tokenizer import Tokenizer

GREEDY = SamplingSettings(temperature=0.0, repetition_penalty=1.0, max_new_tokens=200)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    return Tokenizer.from_dir(train_tokenizer(tmp_path_factory.mktemp("tok")))


def session(tokenizer: Tokenizer, conversation: Conversation) -> ChatSession:
    backend = ScriptedBackend(script_ids(tokenizer, REPLY * 3), tokenizer.vocab_size, context_length=4096)
    return ChatSession(backend, tokenizer, conversation=conversation)


def test_a_full_disk_mid_reply_stops_it_at_what_was_saved(tokenizer: Tokenizer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store, _ = HistoryStore.open(tmp_path / "h.sqlite3")
    saves = []
    real_save = store.save_reply

    def save_then_fill_the_disk(turn_id: int, text: str, **end: bool) -> None:
        if len(saves) >= 2:
            raise sqlite3.OperationalError("database or disk is full")
        saves.append(text)
        real_save(turn_id, text, **end)

    monkeypatch.setattr(store, "save_reply", save_then_fill_the_disk)
    conversation = Conversation()
    shown: list[str] = []
    reply = session(tokenizer, conversation).send("Hi", GREEDY)
    outcome = run_and_save(reply, conversation, store, emit=shown.append, interval=0.0)
    assert outcome.error is not None and "disk is full" in outcome.error and "\n" not in outcome.error
    (turn,) = conversation.turns
    (saved,) = store.load(conversation.id)  # type: ignore[arg-type]
    assert turn.assistant == saved.assistant == saves[-1] and turn.stopped and saved.stopped
    assert len("".join(shown)) > len(turn.assistant)  # more streamed than was kept: the screen goes back to the turn
    store.close()


def test_an_unavailable_history_still_replies_and_says_it_is_not_saved(tokenizer: Tokenizer, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where the data dir should be")
    store, warning = HistoryStore.open(blocker / "h.sqlite3")
    assert not store.writable and warning
    conversation = Conversation()
    reply = session(tokenizer, conversation).send("Hi", GREEDY)
    outcome = run_and_save(reply, conversation, store, emit=lambda piece: None)
    assert outcome.error is None and outcome.unsaved and conversation.turns[0].assistant == (REPLY * 3).strip()
