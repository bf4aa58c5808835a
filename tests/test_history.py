"""Conversation history on disk: round trips, incremental saves, kill -9, corrupt files, private files,
busy databases, concurrent first starts, the integrity check after a crash, unusable folders."""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from files_support import mode, refuse_writes_under
from opt_tpu_tui import history
from opt_tpu_tui.errors import UserError
from opt_tpu_tui.history import SCHEMA_VERSION, HistoryStore, HistoryUnavailable, title_for
from opt_tpu_tui.overrides import Overrides


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


def test_stopped_flag_and_delete(tmp_path: Path) -> None:
    store, _ = HistoryStore.open(tmp_path / "h.sqlite3")
    cid = store.create_conversation("q")
    turn = store.add_turn(cid, "q")
    store.save_reply(turn, "partial", stopped=True, complete=True)
    assert store.load(cid)[0].stopped
    store.start_turn(cid, 0, "q")  # regenerated: the stopped reply becomes an alternative
    assert store.variants(cid) == {0: (2, 2)}
    store.delete_conversation(cid)
    assert store.list_conversations() == [] and store.load(cid) == []
    for table in ("turns", "alternatives"):  # they go with it
        assert store._db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] == 0


def shown(store: HistoryStore, cid: int) -> list[tuple[str, str]]:
    return [(t.user, t.assistant) for t in store.load(cid)]


def chat(store: HistoryStore, cid: int, position: int, user: str, assistant: str) -> None:
    store.save_reply(store.start_turn(cid, position, user), assistant, complete=True)


def test_edits_and_regenerations_keep_every_variant_and_flip_between_them(tmp_path: Path) -> None:
    store, _ = HistoryStore.open(tmp_path / "h.sqlite3")
    cid = store.create_conversation("a")
    chat(store, cid, 0, "a", "A1")
    chat(store, cid, 1, "b", "B1")
    chat(store, cid, 2, "c", "C1")
    chat(store, cid, 2, "c", "C2")  # ctrl+r on the last reply
    assert shown(store, cid) == [("a", "A1"), ("b", "B1"), ("c", "C2")]
    assert store.variants(cid) == {2: (2, 2)}
    chat(store, cid, 1, "b edited", "B2")  # edit the second message: it and all after it are set aside
    assert shown(store, cid) == [("a", "A1"), ("b edited", "B2")]
    assert store.variants(cid) == {1: (2, 2)}  # the regenerated reply travels inside the alternative
    store.switch_variant(cid, 1, -1)
    assert shown(store, cid) == [("a", "A1"), ("b", "B1"), ("c", "C2")]
    assert store.variants(cid) == {1: (1, 2), 2: (2, 2)}  # ... and comes back with it
    store.switch_variant(cid, 2, 1)  # wraps round to the first variant there
    assert shown(store, cid)[2] == ("c", "C1")
    store.switch_variant(cid, 1, 1)
    assert shown(store, cid) == [("a", "A1"), ("b edited", "B2")]
    store.switch_variant(cid, 1, 1)
    assert shown(store, cid) == [("a", "A1"), ("b", "B1"), ("c", "C1")]  # the choice made inside it is kept
    store.close()
    reopened, _ = HistoryStore.open(tmp_path / "h.sqlite3")
    assert shown(reopened, cid) == [("a", "A1"), ("b", "B1"), ("c", "C1")]
    assert reopened.variants(cid) == {1: (1, 2), 2: (1, 2)}
    with pytest.raises(UserError, match="no alternatives"):
        reopened.switch_variant(cid, 0, 1)


def test_a_reply_stopped_before_its_first_token_is_not_kept(tmp_path: Path) -> None:
    store, _ = HistoryStore.open(tmp_path / "h.sqlite3")
    cid = store.create_conversation("a")
    store.save_reply(store.start_turn(cid, 0, "a"), "", stopped=True, complete=True)
    chat(store, cid, 0, "a", "A")
    assert shown(store, cid) == [("a", "A")] and store.variants(cid) == {}


def test_a_damaged_alternative_is_one_line_and_changes_nothing(tmp_path: Path) -> None:
    store, _ = HistoryStore.open(tmp_path / "h.sqlite3")
    cid = store.create_conversation("a")
    chat(store, cid, 0, "a", "A1")
    chat(store, cid, 0, "a", "A2")
    with store._db:
        store._db.execute("UPDATE alternatives SET branch = '{not json'")
    with pytest.raises(UserError, match="damaged") as raised:
        store.switch_variant(cid, 0, 1)
    assert "\n" not in str(raised.value)
    assert shown(store, cid) == [("a", "A2")] and store.variants(cid) == {0: (2, 2)}


def test_a_version_1_history_opens_with_its_conversations(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE conversations (id INTEGER PRIMARY KEY, title TEXT NOT NULL, created REAL NOT NULL, updated REAL NOT NULL);"
        "CREATE TABLE turns (id INTEGER PRIMARY KEY, conversation_id INTEGER NOT NULL REFERENCES conversations(id) "
        "ON DELETE CASCADE, position INTEGER NOT NULL, user TEXT NOT NULL, assistant TEXT NOT NULL DEFAULT '', "
        "stopped INTEGER NOT NULL DEFAULT 0, complete INTEGER NOT NULL DEFAULT 0, created REAL NOT NULL);"
        "INSERT INTO conversations VALUES (1, 'old', 0, 0);"
        "INSERT INTO turns VALUES (1, 1, 0, 'hi', 'hello', 0, 1, 0);"
        "PRAGMA user_version=1;"
    )
    db.close()
    store, warning = HistoryStore.open(path)
    assert warning is None and shown(store, 1) == [("hi", "hello")]
    chat(store, 1, 0, "hi", "hey")
    assert store.variants(1) == {0: (2, 2)}


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


@pytest.mark.parametrize(
    "script, said",
    [
        (  # the right version with the wrong tables
            f"CREATE TABLE conversations (id INTEGER PRIMARY KEY); PRAGMA user_version={SCHEMA_VERSION};",
            ["conversations table lacks", "title"],
        ),
    ],
)
def test_a_database_this_version_cannot_use_is_set_aside(tmp_path: Path, script: str, said: list[str]) -> None:
    path = tmp_path / "h.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(script)
    db.close()
    store, warning = HistoryStore.open(path)
    assert warning is not None and all(text in warning for text in said)
    assert len(list(tmp_path.glob("h.sqlite3.corrupt-*"))) == 1
    store.create_conversation("fresh")  # and a fresh history works in its place
    assert [c.title for c in store.list_conversations()] == ["fresh"]


def test_a_history_from_a_newer_version_is_left_as_it_is(tmp_path: Path) -> None:
    """Going back to an older version must not hide the newer one's history: nothing is renamed or written."""
    path = tmp_path / "h.sqlite3"
    newer, _ = HistoryStore.open(path)
    newer.create_conversation("kept")
    newer._db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    newer.close()
    before = path.read_bytes()
    store, warning = HistoryStore.open(path)
    assert warning is not None and "newer opt-tpu-tui" in warning and "left as it is" in warning
    assert not store.writable and store.list_conversations() == []
    with pytest.raises(HistoryUnavailable):
        store.create_conversation("x")
    store.close()
    assert path.read_bytes() == before and not list(tmp_path.glob("h.sqlite3.corrupt-*"))


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


# privacy, busy databases, concurrent starts, wrong schemas, the integrity check


@pytest.mark.parametrize("before", ["fresh", "older-readable", "corrupt"])
def test_folder_database_wal_shm_and_corrupt_copies_are_private(umask_022: None, tmp_path: Path, before: str) -> None:
    folder = tmp_path / "data" / "opt-tpu-tui"
    path = folder / "history.sqlite3"
    if before != "fresh":
        folder.mkdir(parents=True, mode=0o755)
        if before == "corrupt":
            path.write_bytes(b"not sqlite at all\n" * 200)
        else:
            HistoryStore.open(path)[0].close()
        os.chmod(path, 0o644)
    store, _ = HistoryStore.open(path)
    store.create_conversation("private")
    assert mode(folder) == 0o700
    files = sorted(p.name for p in folder.iterdir() if not p.name.startswith("history.sqlite3.open-"))
    assert {"history.sqlite3", "history.sqlite3-wal", "history.sqlite3-shm"} <= set(files)
    assert len(files) == (4 if before == "corrupt" else 3)  # and the corrupt copy
    assert {name: mode(folder / name) for name in files} == {name: 0o600 for name in files}
    store.close()


HOLDER = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
db.execute("PRAGMA locking_mode=EXCLUSIVE")
db.execute("BEGIN EXCLUSIVE")
db.execute("INSERT INTO conversations(title, created, updated) VALUES ('held', 0, 0)")
db.commit()
print("holding", flush=True)
sys.stdin.read()
"""


def test_a_database_another_process_holds_is_never_renamed(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite3"
    store, _ = HistoryStore.open(path)
    store.create_conversation("mine")
    store.close()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "holding\n"
        started = time.monotonic()
        store, warning = HistoryStore.open(path, busy_wait=0.5)
        assert time.monotonic() - started < 5
    finally:
        holder.communicate("")
    assert warning is not None and len(warning.splitlines()) == 1
    assert str(path) in warning and "another opt-tpu-tui holds it" in warning
    assert not store.writable and store.list_conversations() == [] and store.load(1) == []
    with pytest.raises(HistoryUnavailable, match="another opt-tpu-tui holds it") as raised:
        store.create_conversation("lost?")
    assert isinstance(raised.value, UserError) and str(raised.value) == warning
    assert not list(tmp_path.glob("*corrupt*"))
    store, warning = HistoryStore.open(path)  # once it is let go, everything is there
    assert warning is None and sorted(c.title for c in store.list_conversations()) == ["held", "mine"]


def start_at_once(base: str, rounds: int, barrier: Any, results: Any) -> None:
    """One of three instances: each round, open a fresh history at about the same moment as the others.

    Up to 2 ms of jitter varies which step of its start each one is at when the
    others arrive: with it the old code failed in every try of 60 rounds, in lockstep in fewer.
    What went wrong is sent once, at the end (a queue still full blocks the process's exit).
    """
    random.seed(os.getpid())
    problems = []
    for n in range(rounds):
        barrier.wait()
        time.sleep(random.random() * 0.002)
        try:
            store, warning = HistoryStore.open(Path(base) / str(n) / "h.sqlite3", busy_wait=20)
            if warning:
                problems.append(warning)
            store.create_conversation(f"round {n}")
            store.close()
        except BaseException:  # noqa: BLE001 - reported to the test
            problems.append(traceback.format_exc())
    results.put(problems)


def test_three_instances_starting_at_once_on_a_fresh_machine(tmp_path: Path) -> None:
    rounds = 60  # at least the 25 of the bug report; the old code failed in most runs of 60
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(3), context.Queue()
    workers = [context.Process(target=start_at_once, args=(str(tmp_path), rounds, barrier, results)) for _ in range(3)]
    for worker in workers:
        worker.start()
    problems = [problem for _ in workers for problem in results.get(timeout=120)]
    for worker in workers:
        worker.join(10)
    assert problems == [] and [w.exitcode for w in workers] == [0, 0, 0]
    assert not list(tmp_path.glob("*/*corrupt*"))
    for n in range(rounds):
        store, _ = HistoryStore.open(tmp_path / str(n) / "h.sqlite3")
        assert len(store.list_conversations()) == 3
        store.close()


DIES_WITH_IT_OPEN = """
import os, sys
from pathlib import Path
from opt_tpu_tui.history import HistoryStore
store, _ = HistoryStore.open(Path(sys.argv[1]))
store.create_conversation("q")
os._exit(0)
"""


def close_first(path: Path) -> None:
    HistoryStore.open(path)[0].close()


def die_with_it_open(path: Path) -> None:
    subprocess.run([sys.executable, "-c", DIES_WITH_IT_OPEN, str(path)], check=True)


@pytest.mark.parametrize(
    "before, checks", [(close_first, 0), (die_with_it_open, 1), (lambda path: HistoryStore.open(path), 0)],
    ids=["clean-close", "died-open", "open-in-another-instance"],
)  # fmt: skip
def test_the_integrity_check_runs_only_after_an_unclean_shutdown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, before: Callable[[Path], Any], checks: int
) -> None:
    path = tmp_path / "h.sqlite3"
    close_first(path)
    before(path)
    calls = []
    monkeypatch.setattr(history, "quick_check", lambda db: calls.append(db))
    store, warning = HistoryStore.open(path)
    assert warning is None and len(calls) == checks
    store.close()
    HistoryStore.open(path)[0].close()
    assert len(calls) == checks  # a crash is checked once, not again at every start


@pytest.mark.parametrize("trouble", ["folder-is-a-file", "read-only-folder"])
def test_an_unusable_data_folder_gives_an_unavailable_store_and_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, trouble: str
) -> None:
    folder = tmp_path / "data"
    if trouble == "folder-is-a-file":
        folder.write_text("mine")
    else:
        folder.mkdir()
        refuse_writes_under(folder, monkeypatch)
    store, warning = HistoryStore.open(folder / "h.sqlite3")
    assert warning is not None and len(warning.splitlines()) == 1 and str(folder) in warning
    assert not store.writable and store.list_conversations() == []
    with pytest.raises(HistoryUnavailable):
        store.add_turn(1, "x")
    store.close()
    assert (folder.read_text() == "mine") if trouble == "folder-is-a-file" else list(folder.iterdir()) == []


# search


def saved(store: HistoryStore, title: str, *turns: tuple[str, str]) -> int:
    """A conversation titled ``title`` with ``turns`` (user, reply), all complete; returns its id."""
    cid = store.create_conversation(title)
    for user, reply in turns:
        store.save_reply(store.add_turn(cid, user), reply, complete=True)
    return cid


def found(hits: list[history.SearchHit]) -> list[tuple[int, int | None, str]]:
    return [(hit.conversation_id, hit.turn, hit.field) for hit in hits]


def test_search_finds_titles_messages_and_replies_newest_first_case_insensitively(tmp_path: Path) -> None:
    store, _ = HistoryStore.open(tmp_path / "h.sqlite3")
    old = saved(store, "Trip planning", ("where to go in ROME?", "Rome in spring."), ("and Paris?", "Paris too."))
    new = saved(store, "Cooking", ("pasta", "Carbonara, as in rome."))
    store.rename_conversation(old, "Rome trip")  # a title that no message holds
    (last,) = store._db.execute("SELECT MAX(id) FROM turns WHERE conversation_id = ?", (new,)).fetchone()
    store.save_reply(last, "Carbonara, as in rome.", complete=True)  # new is the newest again
    assert found(store.search("rome")) == [
        (new, 0, "assistant"),
        (old, None, "title"),  # a conversation's title first, then its turns, latest first
        (old, 0, "user"),
        (old, 0, "assistant"),
    ]
    assert found(store.search("  PARIS ")) == [(old, 1, "user"), (old, 1, "assistant")]
    assert store.search("Élan") == [] and store.search("   ") == []
    saved(store, "accents", ("ÉLAN vital", "élan"))
    assert [hit.field for hit in store.search("élan")] == ["user", "assistant"]  # beyond ASCII too
    store.close()


def test_search_takes_percent_underscore_and_backslash_literally(tmp_path: Path) -> None:
    store, _ = HistoryStore.open(tmp_path / "h.sqlite3")
    plain = saved(store, "plain", ("abc", "nothing special here"))
    percent = saved(store, "percent", ("how much?", "100% sure"))
    underscore = saved(store, "underscore", ("snake_case", "ok"))
    backslash = saved(store, "backslash", ("C:\\temp", "ok"))
    assert found(store.search("%")) == [(percent, 0, "assistant")]
    assert found(store.search("_")) == [(underscore, 0, "user")]
    assert found(store.search("\\")) == [(backslash, 0, "user")]
    assert found(store.search("e_c")) == [(underscore, 0, "user")]  # not "e", any character, "c"
    assert found(store.search("0%")) == [(percent, 0, "assistant")]
    assert plain not in {hit.conversation_id for q in ("%", "_", "\\") for hit in store.search(q)}
    store.close()


def test_search_snippet_is_one_safe_line_around_the_match(tmp_path: Path) -> None:
    store, _ = HistoryStore.open(tmp_path / "h.sqlite3")
    reply = "x" * 300 + "\n\x1b]0;owned\x07 the NEEDLE\tis here\n" + "y" * 300
    saved(store, "long", ("q", reply))
    (hit,) = store.search("needle")
    start, end = hit.match
    assert hit.snippet[start:end] == "NEEDLE"
    assert "\x1b" not in hit.snippet and "\x07" not in hit.snippet and "␛]0;owned␇" in hit.snippet
    assert "\n" not in hit.snippet and "\t" not in hit.snippet
    assert hit.snippet.startswith("…") and hit.snippet.endswith("…") and len(hit.snippet) <= 110


def test_search_is_limited_and_nothing_without_a_history(tmp_path: Path) -> None:
    store, _ = HistoryStore.open(tmp_path / "h.sqlite3")
    cid = saved(store, "many", *[(f"word {i}", "reply") for i in range(30)])
    hits = store.search("word", limit=5)
    assert found(hits) == [(cid, turn, "user") for turn in (29, 28, 27, 26, 25)]  # the latest turns
    assert len(store.search("word")) == 30 and len(store.search("r")) == history.SEARCH_LIMIT  # 60 match
    store.close()
    assert store.search("word") == []  # closed: reads return nothing
    unavailable, _ = HistoryStore.unavailable(tmp_path / "other.sqlite3", "held elsewhere")
    assert unavailable.search("word") == []


# A version-1 history as that version made it: no settings column on conversations.
VERSION_1 = """
CREATE TABLE conversations (id INTEGER PRIMARY KEY, title TEXT NOT NULL, created REAL NOT NULL, updated REAL NOT NULL);
CREATE TABLE turns (
    id INTEGER PRIMARY KEY,
    conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    position INTEGER NOT NULL, user TEXT NOT NULL, assistant TEXT NOT NULL DEFAULT '',
    stopped INTEGER NOT NULL DEFAULT 0, complete INTEGER NOT NULL DEFAULT 0, created REAL NOT NULL
);
CREATE INDEX turns_by_conversation ON turns(conversation_id, position);
INSERT INTO conversations VALUES (7, 'old chat', 1.0, 2.0);
INSERT INTO turns VALUES (1, 7, 0, 'first question', 'first answer', 0, 1, 1.0);
INSERT INTO turns VALUES (2, 7, 1, 'second question', 'cut short', 1, 1, 2.0);
PRAGMA user_version=1;
"""


def test_a_version_1_history_gains_the_settings_column_in_place_and_keeps_everything(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(VERSION_1)
    db.close()
    store, warning = HistoryStore.open(path)
    assert warning is None and not list(tmp_path.glob("*corrupt*"))  # upgraded, not set aside
    assert store._db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
    assert "settings" in history.table_columns(store._db, "conversations")
    assert [(c.id, c.title, c.turns) for c in store.list_conversations()] == [(7, "old chat", 2)]
    assert [(t.user, t.assistant, t.stopped) for t in store.load(7)] == [
        ("first question", "first answer", False), ("second question", "cut short", True)
    ]  # fmt: skip
    assert store.conversation_settings(7) == (Overrides(), None)  # follows the defaults
    store.set_conversation_settings(7, Overrides({"temperature": 0.2}))
    store.close()
    store, warning = HistoryStore.open(path)  # and opens again as it is now
    assert warning is None and store.conversation_settings(7) == (Overrides({"temperature": 0.2}), None)


def test_conversation_settings_round_trip_and_a_fresh_file_has_the_column(tmp_path: Path) -> None:
    store, warning = HistoryStore.open(tmp_path / "h.sqlite3")
    assert warning is None
    own = Overrides({"temperature": 0.2, "max_new_tokens": 7, "seed": None}, "Be terse.")
    cid = store.create_conversation("hello", own)
    other = store.create_conversation("plain")
    store.close()
    store, _ = HistoryStore.open(tmp_path / "h.sqlite3")
    assert store.conversation_settings(cid) == (own, None)
    assert store.conversation_settings(other) == (Overrides(), None)
    store.set_conversation_settings(cid, Overrides())
    assert store.conversation_settings(cid) == (Overrides(), None)
    assert store.conversation_settings(12345) == (Overrides(), None)  # deleted meanwhile: the defaults


@pytest.mark.parametrize(
    "stored, kept, said",
    [
        ("{not json", Overrides(), "not valid JSON"),
        ("[1, 2]", Overrides(), "not a JSON object"),
        (b"\x00\x01", Overrides(), "not text"),
        ('{"sampling": {"temperature": 9, "top_k": 5}}', Overrides({"top_k": 5}), "temperature must be between"),
        ('{"sampling": {"max_new_tokens": 2.5}, "preamble": 3}', Overrides(), "whole number"),
        ('{"sampling": "hot"}', Overrides(), "sampling is not an object"),
    ],
)
def test_bad_settings_in_the_database_give_the_defaults_and_one_warning(
    tmp_path: Path, stored: object, kept: Overrides, said: str
) -> None:
    store, _ = HistoryStore.open(tmp_path / "h.sqlite3")
    cid = store.create_conversation("q")
    store._db.execute("UPDATE conversations SET settings = ? WHERE id = ?", (stored, cid))
    store._db.commit()
    settings, warning = store.conversation_settings(cid)
    assert settings == kept
    assert warning is not None and said in warning and f"conversation {cid}" in warning and "\n" not in warning


def test_unknown_settings_keys_from_a_newer_version_are_skipped_quietly(tmp_path: Path) -> None:
    assert Overrides.from_json('{"sampling": {"min_p": 0.1, "top_p": 0.5}, "style": 1}') == (
        Overrides({"top_p": 0.5}), None
    )  # fmt: skip


def damage_pages(path: Path) -> None:
    """Overwrite bytes all through the file past its first page: the header is intact, so open() accepts it."""
    data = bytearray(path.read_bytes())
    data[4096::97] = b"\xab" * len(data[4096::97])
    path.write_bytes(data)


def two_conversations(path: Path) -> None:
    store, _ = HistoryStore.open(path)
    for n in range(2):
        saved(store, f"chat {n}", *[(f"question {n}.{i} " + "x" * 300, "answer " + "y" * 300) for i in range(20)])
    store.close()


@pytest.mark.parametrize(
    "use",
    [
        lambda store: store.list_conversations(),
        lambda store: store.search("question"),
        lambda store: store.load(1),
        lambda store: store.variants(1),
        lambda store: store.add_turn(1, "more"),
    ],
    ids=["list", "search", "load", "variants", "write"],
)
def test_damage_met_while_running_is_one_line_then_unavailable_and_the_next_start_sets_it_aside(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, use: Callable[[HistoryStore], Any]
) -> None:
    path = tmp_path / "h.sqlite3"
    two_conversations(path)
    damage_pages(path)
    damaged = path.read_bytes()
    store, warning = HistoryStore.open(path)
    assert warning is None and store.writable  # the header is intact: open() cannot tell
    with pytest.raises(HistoryUnavailable) as raised:
        for _ in range(3):  # a read may get through before SQLite meets a damaged page
            use(store)
            store.list_conversations()
            store.search("answer")
    said = str(raised.value)
    assert len(said.splitlines()) == 1 and str(path) in said and "damaged" in said and "next start" in said
    assert "h.sqlite3.corrupt-" in said
    assert not store.writable and store.problem == said
    assert store.list_conversations() == [] and store.search("question") == []  # unavailable from now on
    with pytest.raises(HistoryUnavailable):
        store.create_conversation("x")
    store.close()
    assert path.read_bytes() == damaged and not list(tmp_path.glob("*corrupt*"))  # not touched this run
    monkeypatch.setattr(history, "quick_check", lambda db: None)  # damage the check might miss is set aside all the same
    fresh, warning = HistoryStore.open(path)
    assert warning is not None and "moved it to h.sqlite3.corrupt-" in warning and "damaged" in warning
    (aside,) = tmp_path.glob("h.sqlite3.corrupt-*")
    assert aside.read_bytes() == damaged
    assert fresh.list_conversations() == [] and fresh.create_conversation("fresh")
    fresh.close()
    again, warning = HistoryStore.open(path)  # the fresh file is not set aside in its turn
    assert warning is None and [c.title for c in again.list_conversations()] == ["fresh"]
    again.close()


def test_search_finds_text_in_variants_not_shown_and_show_variant_brings_it_back(tmp_path: Path) -> None:
    store, _ = HistoryStore.open(tmp_path / "h.sqlite3")
    cid = store.create_conversation("a")
    chat(store, cid, 0, "a", "A1")
    chat(store, cid, 1, "b", "B1 with a kiwi")
    chat(store, cid, 2, "c", "C1 ÉLAN")
    chat(store, cid, 2, "c", "C2")  # regenerated: C1 is a variant inside what the edit sets aside
    chat(store, cid, 1, "b edited", "B2")  # edited: b, B1 and c (with C1 and C2) set aside
    assert shown(store, cid) == [("a", "A1"), ("b edited", "B2")]
    (kiwi,) = store.search("KIWI")
    assert (kiwi.conversation_id, kiwi.turn, kiwi.field) == (cid, 1, "assistant") and kiwi.variant
    assert kiwi.snippet[kiwi.match[0] : kiwi.match[1]] == "kiwi"
    (elan,) = store.search("élan")  # in a variant nested inside another, beyond ASCII too
    assert (elan.turn, elan.field, len(elan.variant)) == (2, "assistant", 2)
    assert [hit.variant == () for hit in store.search("b")] == [True, True, False, False]  # the turns shown first
    store.show_variant(cid, elan.variant)
    assert shown(store, cid) == [("a", "A1"), ("b", "B1 with a kiwi"), ("c", "C1 ÉLAN")]
    assert store.variants(cid) == {1: (1, 2), 2: (1, 2)}
    assert not store.search("kiwi")[0].variant and store.search("B2")[0].variant  # now the other way round
    with pytest.raises(UserError, match="not there"):
        store.show_variant(cid, elan.variant)  # shown already: nothing changes
    assert shown(store, cid)[2] == ("c", "C1 ÉLAN")
    store.close()
