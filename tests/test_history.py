"""Conversation history on disk: round trips, incremental saves, kill -9, corrupt files."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from opt_tpu_tui.history import SCHEMA_VERSION, HistoryStore, title_for


def test_round_trip_and_listing_order(tmp_path: Path) -> None:
    store, warning = HistoryStore.open(tmp_path / "h.sqlite3")
    assert warning is None
    first = store.create_conversation("What is the capital of France?")
    turn = store.add_turn(first, "What is the capital of France?")
    store.save_reply(turn, "Par")
    store.save_reply(turn, "Paris.", complete=True)
    second = store.create_conversation("hello")
    store.add_turn(second, "hello")
    store.close()

    store, _ = HistoryStore.open(tmp_path / "h.sqlite3")
    listed = store.list_conversations()
    assert [c.id for c in listed] == [second, first]  # newest first
    assert listed[1].title == "What is the capital of France?" and listed[1].turns == 1
    (loaded,) = store.load(first)
    assert (loaded.user, loaded.assistant, loaded.stopped) == ("What is the capital of France?", "Paris.", False)
    (interrupted,) = store.load(second)
    assert interrupted.stopped  # never completed: shown as stopped


def test_stopped_flag_regenerate_and_delete(tmp_path: Path) -> None:
    store, _ = HistoryStore.open(tmp_path / "h.sqlite3")
    cid = store.create_conversation("q")
    turn = store.add_turn(cid, "q")
    store.save_reply(turn, "partial", stopped=True, complete=True)
    assert store.load(cid)[0].stopped
    assert store.last_turn_id(cid) == turn
    store.restart_turn(turn)
    store.save_reply(turn, "again", complete=True)
    assert [(t.assistant, t.stopped) for t in store.load(cid)] == [("again", False)]
    store.delete_conversation(cid)
    assert store.list_conversations() == [] and store.load(cid) == []
    assert store._db.execute("SELECT COUNT(*) FROM turns").fetchone()[0] == 0  # turns go with it


def test_schema_version_and_durability_pragmas(tmp_path: Path) -> None:
    store, _ = HistoryStore.open(tmp_path / "h.sqlite3")
    db = store._db
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_garbage_file_is_moved_aside_with_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite3"
    path.write_bytes(b"not sqlite at all\n" * 200)
    store, warning = HistoryStore.open(path)
    assert warning is not None and "moved it to h.sqlite3.corrupt-" in warning and str(path) in warning
    (aside,) = tmp_path.glob("h.sqlite3.corrupt-*")
    assert aside.read_bytes().startswith(b"not sqlite at all")
    cid = store.create_conversation("fresh")
    assert store.list_conversations()[0].id == cid


def test_newer_schema_is_not_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite3"
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    db.close()
    _, warning = HistoryStore.open(path)
    assert warning is not None and "newer version" in warning
    assert len(list(tmp_path.glob("h.sqlite3.corrupt-*"))) == 1


def test_title_is_one_short_line() -> None:
    assert title_for("a\n  b\tc") == "a b c"
    assert len(title_for("x" * 500)) == 60


WRITER = """
import sys, time
from pathlib import Path
from opt_tpu_tui.history import HistoryStore
store, _ = HistoryStore.open(Path(sys.argv[1]))
cid = store.create_conversation("q")
turn = store.add_turn(cid, "q")
text = ""
while True:
    text += "token "
    store.save_reply(turn, text)
    print(len(text), flush=True)
    time.sleep(0.01)
"""


def test_kill_9_mid_reply_loses_only_the_unsaved_tail(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite3"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    assert writer.stdout is not None
    saved = 0
    deadline = time.monotonic() + 30
    while saved < 200 and time.monotonic() < deadline:
        saved = int(writer.stdout.readline())
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait()
    store, warning = HistoryStore.open(path)
    assert warning is None
    (turn,) = store.load(store.list_conversations()[0].id)
    assert len(turn.assistant) >= saved  # everything reported saved survived
    assert turn.stopped  # an interrupted reply comes back marked
