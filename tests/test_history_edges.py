"""Issue 22's edges of the history and the -c line history: a regenerated message found once, numbers never
reused, the model that replied kept, FIFOs that must not hang, and files removed or locked while in use."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from opt_tpu_tui.history import HistoryStore


def chat(store: HistoryStore, cid: int, position: int, user: str, assistant: str, **kwargs: str) -> None:
    store.save_reply(store.start_turn(cid, position, user, **kwargs), assistant, complete=True)


def test_a_regenerated_message_is_found_once_and_each_distinct_reply_still_found(tmp_path: Path) -> None:
    store, _ = HistoryStore.open(tmp_path / "h.sqlite3")
    cid = store.create_conversation("greetings")
    chat(store, cid, 0, "Tell me about zebras", "Stripes.")
    chat(store, cid, 0, "Tell me about zebras", "Horses, striped.")  # ctrl+r: the first reply is set aside
    hits = store.search("zebras")
    assert [(hit.turn, hit.field, hit.variant == ()) for hit in hits] == [(0, "user", True)]
    assert [hit.variant == () for hit in store.search("stripe")] == [True, False]  # both replies, shown first
    store.close()


def test_a_deleted_conversations_number_is_never_given_again(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite3"
    store, _ = HistoryStore.open(path)
    first, second = store.create_conversation("one"), store.create_conversation("two")
    store.delete_conversation(second)
    third = store.create_conversation("three")
    assert third not in (first, second) and third > second
    store.close()
    store, _ = HistoryStore.open(path)  # kept in the file, not in the instance
    store.delete_conversation(third)
    assert store.create_conversation("four") == third + 1
    store.close()


VERSION_3 = """
CREATE TABLE conversations (id INTEGER PRIMARY KEY, title TEXT NOT NULL, created REAL NOT NULL, updated REAL NOT NULL,
    settings TEXT NOT NULL DEFAULT '{}');
CREATE TABLE turns (id INTEGER PRIMARY KEY, conversation_id INTEGER NOT NULL REFERENCES conversations(id)
    ON DELETE CASCADE, position INTEGER NOT NULL, user TEXT NOT NULL, assistant TEXT NOT NULL DEFAULT '',
    stopped INTEGER NOT NULL DEFAULT 0, complete INTEGER NOT NULL DEFAULT 0, created REAL NOT NULL);
CREATE TABLE alternatives (id INTEGER PRIMARY KEY, conversation_id INTEGER NOT NULL REFERENCES conversations(id)
    ON DELETE CASCADE, position INTEGER NOT NULL, branch TEXT NOT NULL, created REAL NOT NULL);
INSERT INTO conversations VALUES (5, 'old chat', 1.0, 2.0, '{}');
INSERT INTO conversations VALUES (9, 'newest old chat', 1.0, 3.0, '{}');
INSERT INTO turns VALUES (1, 5, 0, 'old question', 'old answer', 0, 1, 1.0);
INSERT INTO alternatives VALUES (1, 5, 0, '{"turns": [{"user": "old question", "assistant": "first answer",
    "stopped": false, "created": 0.5}], "alternatives": []}', 0.5);
PRAGMA user_version=3;
"""


def version_3_history(path: Path) -> None:
    db = sqlite3.connect(path)
    db.executescript(VERSION_3)
    db.close()


def test_a_version_3_history_is_upgraded_keeps_everything_and_counts_numbers_from_its_largest(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite3"
    version_3_history(path)
    store, warning = HistoryStore.open(path)
    assert warning is None and not list(tmp_path.glob("*corrupt*"))
    assert [(c.id, c.turns, c.model) for c in store.list_conversations()] == [(9, 0, ""), (5, 1, "")]
    assert [(t.user, t.assistant, t.model) for t in store.load(5)] == [("old question", "old answer", "")]
    store.delete_conversation(9)
    assert store.create_conversation("new") == 10  # 9 was given before: not again
    store.switch_variant(5, 0, -1)  # a variant set aside by version 3 (no model in its JSON) comes back
    assert [(t.assistant, t.model) for t in store.load(5)] == [("first answer", "")]
    store.close()


def test_the_model_that_replied_is_kept_per_reply_through_variants_and_listed(tmp_path: Path) -> None:
    store, _ = HistoryStore.open(tmp_path / "h.sqlite3")
    cid = store.create_conversation("q")
    chat(store, cid, 0, "q", "from the small one", model="opt-125m")
    chat(store, cid, 1, "q2", "still small", model="opt-125m")
    chat(store, cid, 1, "q2", "from the big one", model="opt-6.7b")  # ctrl+r with another model loaded
    assert [t.model for t in store.load(cid)] == ["opt-125m", "opt-6.7b"]
    assert store.list_conversations()[0].model == "opt-6.7b"  # the latest reply's
    store.switch_variant(cid, 1, -1)
    assert [(t.assistant, t.model) for t in store.load(cid)] == [("from the small one", "opt-125m"), ("still small", "opt-125m")]
    copy = store.create_conversation("copy", turns=store.load(cid))  # saved anew (deleted elsewhere): models kept
    assert [t.model for t in store.load(copy)] == ["opt-125m", "opt-125m"]
    store.close()


def test_the_export_names_the_model_of_each_reply_and_nothing_for_an_old_one(tmp_path: Path) -> None:
    from opt_tpu_tui.chat import Turn
    from opt_tpu_tui.export import conversation_markdown

    text = conversation_markdown("t", [Turn("a", "b", model="opt-125m"), Turn("c", "d")])
    assert "**Model (opt-125m):**\n\nb" in text and "**Model:**\n\nd" in text


ROOT = Path(__file__).resolve().parents[1]


def run_with_timeout(args: list[str], tmp_path: Path, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """``python ARGS`` with this tree's package and the test's data folder; a hang fails the test, not the run."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "XDG_DATA_HOME": str(tmp_path / "data"),
           "XDG_CONFIG_HOME": str(tmp_path / "config")}  # fmt: skip
    try:
        return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"hung: {args}")


def test_a_fifo_at_the_history_path_is_one_line_not_a_hang(tmp_path: Path) -> None:
    data = tmp_path / "data" / "opt-tpu-tui"
    data.mkdir(parents=True)
    os.mkfifo(data / "history.sqlite3")
    done = run_with_timeout(["-m", "opt_tpu_tui", "export", "--last"], tmp_path)
    lines = done.stderr.splitlines()
    assert done.returncode == 2 and "Traceback" not in done.stderr and len(lines) == 2, done.stderr
    assert "history.sqlite3: history unavailable, it is a FIFO, not a database file (move it away)" in lines[0]
    assert (data / "history.sqlite3").is_fifo()  # left as it is


def test_a_fifo_named_like_an_open_marker_does_not_block_the_start(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "h.sqlite3.open-1-abc")
    code = "import sys; from pathlib import Path; from opt_tpu_tui.history import HistoryStore; " \
           "s, w = HistoryStore.open(Path(sys.argv[1])); print(w); s.close()"  # fmt: skip
    done = run_with_timeout(["-c", code, str(tmp_path / "h.sqlite3")], tmp_path)
    assert done.returncode == 0 and done.stdout.strip() == "None", done.stderr


@pytest.mark.parametrize("step", ["load", "append"])
def test_a_fifo_at_the_line_history_path_is_one_warning_not_a_hang(tmp_path: Path, step: str) -> None:
    path = tmp_path / "data" / "opt-tpu-tui" / "line-history.jsonl"
    path.parent.mkdir(parents=True)
    os.mkfifo(path)
    code = "import sys; from opt_tpu_tui import paths; from opt_tpu_tui.line_history import LineHistory; " \
           "h = LineHistory(paths.line_history_file()); " \
           + ("print(h.load()); h.append('hi')" if step == "load" else "h.append('hi'); h.append('again')")  # fmt: skip
    done = run_with_timeout(["-c", code], tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stderr == f"opt-tpu-tui: warning: {path}: the line history stays in memory (it is a FIFO, not a file; move it away)\n"
    assert path.is_fifo()


def remove_history(path: Path) -> None:
    """``rm history.sqlite3*``: the database, its -wal and -shm, and the open markers."""
    for found in path.parent.glob(path.name + "*"):
        found.unlink()


def test_a_history_deleted_while_open_is_started_again_at_its_path_not_written_unlinked(tmp_path: Path) -> None:
    from opt_tpu_tui.history import ConversationGone, HistoryUnavailable

    path = tmp_path / "history.sqlite3"
    store, _ = HistoryStore.open(path)
    cid = store.create_conversation("before")
    chat(store, cid, 0, "before", "kept in the deleted file")
    streaming = store.start_turn(cid, 1, "mid-reply")
    remove_history(path)
    with pytest.raises(HistoryUnavailable, match="no longer in the history"):
        store.save_reply(streaming, "lost with the file", complete=True)  # said, not written unlinked
    assert path.exists() and store.writable
    with pytest.raises(ConversationGone):  # the app saves the conversation again, from what it holds
        store.start_turn(cid, 2, "next")
    again = store.create_conversation("saved again")
    chat(store, again, 0, "saved again", "in the new file")
    other, _ = HistoryStore.open(tmp_path / "history.sqlite3")  # what is on disk at the path
    assert [(c.id, c.title) for c in other.list_conversations()] == [(again, "saved again")]
    other.close()
    store.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history.sqlite3"]  # its markers went at close


def test_a_history_replaced_while_open_is_followed(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite3"
    store, _ = HistoryStore.open(path)
    store.create_conversation("old file")
    remove_history(path)
    other, _ = HistoryStore.open(path)  # another instance started a new file there meanwhile
    mine = other.create_conversation("theirs")
    assert [c.title for c in store.list_conversations()] == ["theirs"]  # not the unlinked file's
    assert store.create_conversation("mine") == mine + 1
    assert [c.title for c in other.list_conversations()] == ["mine", "theirs"]
    store.close()
    other.close()


def test_a_symlink_to_a_file_that_is_no_database_is_set_aside_without_changing_its_target(tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes, not a database\n")
    notes.chmod(0o644)
    link = tmp_path / "data" / "history.sqlite3"
    link.parent.mkdir(mode=0o700)
    link.symlink_to(notes)
    store, warning = HistoryStore.open(link)
    assert warning is not None and "moved it to history.sqlite3.corrupt-" in warning and store.writable
    (aside,) = link.parent.glob("history.sqlite3.corrupt-*")
    assert aside.is_symlink() and aside.resolve() == notes  # the link set aside, as it was
    assert notes.stat().st_mode & 0o777 == 0o644 and notes.read_text() == "my notes, not a database\n"
    assert not link.is_symlink() and link.stat().st_mode & 0o777 == 0o600  # a new, private history
    store.close()


CLOSE_IN_A_READ_ONLY_FOLDER = """
import os, sys
from pathlib import Path
from opt_tpu_tui.history import HistoryStore
path = Path(sys.argv[1])
store, _ = HistoryStore.open(path)
turn = store.add_turn(store.create_conversation("hi"), "hi")
os.chmod(path.parent, 0o500)  # chmod 500 on the data folder mid-session
store.save_reply(turn, "hello", complete=True)
store.close()
print("closed")
"""


def test_a_data_folder_made_read_only_mid_session_is_one_line_at_exit_not_a_traceback(tmp_path: Path) -> None:
    """Run as an unprivileged user (root ignores the folder's mode), in a folder that user owns."""
    if not shutil.which("setpriv"):
        pytest.skip("setpriv is needed to run as another user")
    as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable]
    probe = subprocess.run([*as_nobody, "-c", "import opt_tpu_tui.history"], env={**os.environ, "PYTHONPATH": str(ROOT)},
                           capture_output=True, text=True, timeout=60, cwd="/")  # fmt: skip
    if probe.returncode != 0:  # e.g. a pyenv Python under root's private home
        pytest.skip(f"this Python cannot run as another user here: {probe.stderr.strip().splitlines()[-1:]}")
    base = Path(tempfile.mkdtemp(prefix="opt-tpu-tui-ro-"))
    try:
        os.chmod(base, 0o755)
        data = base / "data"
        data.mkdir()
        os.chown(data, 65534, 65534)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        done = subprocess.run(
            [*as_nobody, "-c", CLOSE_IN_A_READ_ONLY_FOLDER, str(data / "history.sqlite3")],
            env=env, capture_output=True, text=True, timeout=60, cwd=base,
        )  # fmt: skip
        assert done.returncode == 0 and done.stdout == "closed\n", done.stderr
        assert "Traceback" not in done.stderr and done.stderr.count("\n") == 1
        assert "history.sqlite3.open-" in done.stderr and "the next start checks the history's integrity" in done.stderr
        os.chmod(data, 0o700)
        store, warning = HistoryStore.open(data / "history.sqlite3")  # the reply was saved; the check finds it whole
        assert warning is None and store.load(store.list_conversations()[0].id)[0].assistant == "hello"
        store.close()
    finally:
        shutil.rmtree(base)
