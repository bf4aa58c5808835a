"""Conversation history in SQLite (standard library), in the user data dir.

Why SQLite: a reply is saved piece by piece while it streams, and each save must be
durable and atomic without rewriting the whole history. WAL with ``synchronous=FULL``
makes every commit survive a power cut, and a ``kill -9`` mid-reply loses only what
was generated since the last save (the app saves a few times a second).

Schema (``PRAGMA user_version`` = 1)::

    conversations(id, title, created, updated)
    turns(id, conversation_id, position, user, assistant, stopped, complete, created)

``complete`` is 0 while a reply streams; a turn found incomplete when a conversation
is reopened was interrupted (the app died), and is shown as stopped. A file that is
not a readable SQLite database is renamed to ``history.sqlite3.corrupt-<time>`` and a
fresh one started, with a warning. No Textual import here: the store is used from
the UI thread and from the reply worker, serialised by one lock.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from opt_tpu_tui import paths
from opt_tpu_tui.atomic import fsync_dir, move_aside
from opt_tpu_tui.chat import Turn

SCHEMA_VERSION = 1
TITLE_LENGTH = 60
SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    id INTEGER PRIMARY KEY,
    title TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS turns (
    id INTEGER PRIMARY KEY,
    conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    user TEXT NOT NULL,
    assistant TEXT NOT NULL DEFAULT '',
    stopped INTEGER NOT NULL DEFAULT 0,
    complete INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS turns_by_conversation ON turns(conversation_id, position);
"""


class HistoryError(Exception):
    """The database file is not usable (raised inside; the store turns it into a warning)."""


@dataclass(frozen=True)
class ConversationSummary:
    id: int
    title: str
    updated: float
    turns: int


def title_for(user: str) -> str:
    """A one-line title from the first message."""
    line = " ".join(user.split())
    return line if len(line) <= TITLE_LENGTH else line[: TITLE_LENGTH - 1] + "…"


class HistoryStore:
    """Conversations on disk. Open with :meth:`open`, which sets a corrupt file aside."""

    def __init__(self, path: Path, connection: sqlite3.Connection) -> None:
        self.path = path
        self._db = connection
        self._lock = threading.Lock()

    @classmethod
    def open(cls, path: Path | None = None) -> tuple[HistoryStore, str | None]:
        """Open (or create) the history; returns the store and a warning if a corrupt file was set aside."""
        path = path or paths.history_file()
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            return cls(path, cls._connect(path)), None
        except (sqlite3.DatabaseError, HistoryError) as error:
            problem = str(error)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        aside = move_aside(path, stamp)
        for suffix in ("-wal", "-shm"):
            side = path.with_name(path.name + suffix)
            if side.exists():
                move_aside(side, stamp)
        store = cls(path, cls._connect(path))
        return store, f"{path}: {problem}; moved it to {aside.name} and started a new history"

    @staticmethod
    def _connect(path: Path) -> sqlite3.Connection:
        created = not path.exists()
        db = sqlite3.connect(path, check_same_thread=False, timeout=5.0)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA foreign_keys=ON")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise HistoryError(f"written by a newer version (schema {version}, this one reads {SCHEMA_VERSION})")
            check = db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise HistoryError(f"damaged database ({check})")
            if version < SCHEMA_VERSION:
                db.executescript(f"BEGIN; {SCHEMA} PRAGMA user_version={SCHEMA_VERSION}; COMMIT;")
        except BaseException:
            db.close()
            raise
        if created:
            fsync_dir(path.parent)
        return db

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # conversations

    def create_conversation(self, first_user: str) -> int:
        now = time.time()
        with self._lock, self._db:
            cursor = self._db.execute(
                "INSERT INTO conversations(title, created, updated) VALUES (?, ?, ?)", (title_for(first_user), now, now)
            )
            return int(cursor.lastrowid or 0)

    def list_conversations(self) -> list[ConversationSummary]:
        """Newest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT c.id, c.title, c.updated, COUNT(t.id) FROM conversations c "
                "LEFT JOIN turns t ON t.conversation_id = c.id GROUP BY c.id ORDER BY c.updated DESC, c.id DESC"
            ).fetchall()
        return [ConversationSummary(int(i), str(title), float(updated), int(n)) for i, title, updated, n in rows]

    def load(self, conversation_id: int) -> list[Turn]:
        """The turns of a conversation in order; an interrupted reply comes back marked stopped."""
        with self._lock:
            rows = self._db.execute(
                "SELECT user, assistant, stopped, complete FROM turns WHERE conversation_id = ? ORDER BY position",
                (conversation_id,),
            ).fetchall()
        return [Turn(user=u, assistant=a, stopped=bool(s) or not c) for u, a, s, c in rows]

    def delete_conversation(self, conversation_id: int) -> None:
        with self._lock, self._db:
            self._db.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,))

    # turns

    def add_turn(self, conversation_id: int, user: str) -> int:
        """Append a turn whose reply is about to stream; returns its id."""
        now = time.time()
        with self._lock, self._db:
            position = self._db.execute(
                "SELECT COALESCE(MAX(position), -1) + 1 FROM turns WHERE conversation_id = ?", (conversation_id,)
            ).fetchone()[0]
            cursor = self._db.execute(
                "INSERT INTO turns(conversation_id, position, user, created) VALUES (?, ?, ?, ?)",
                (conversation_id, position, user, now),
            )
            self._db.execute("UPDATE conversations SET updated = ? WHERE id = ?", (now, conversation_id))
            return int(cursor.lastrowid or 0)

    def restart_turn(self, turn_id: int) -> None:
        """Clear a turn's reply before it is regenerated."""
        with self._lock, self._db:
            self._db.execute("UPDATE turns SET assistant = '', stopped = 0, complete = 0 WHERE id = ?", (turn_id,))

    def save_reply(self, turn_id: int, assistant: str, *, stopped: bool = False, complete: bool = False) -> None:
        """Store the reply so far (called while it streams, and once more at its end)."""
        with self._lock, self._db:
            self._db.execute(
                "UPDATE turns SET assistant = ?, stopped = ?, complete = ? WHERE id = ?",
                (assistant, int(stopped), int(complete), turn_id),
            )
            self._db.execute(
                "UPDATE conversations SET updated = ? WHERE id = (SELECT conversation_id FROM turns WHERE id = ?)",
                (time.time(), turn_id),
            )

    def last_turn_id(self, conversation_id: int) -> int | None:
        with self._lock:
            row = self._db.execute(
                "SELECT id FROM turns WHERE conversation_id = ? ORDER BY position DESC LIMIT 1", (conversation_id,)
            ).fetchone()
        return int(row[0]) if row else None
