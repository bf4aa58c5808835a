"""Conversation history in SQLite (standard library), in the user data dir.

Why SQLite: a reply is saved piece by piece while it streams, and each save must be
durable and atomic without rewriting the whole history. WAL with ``synchronous=FULL``
makes every commit survive a power cut, and a ``kill -9`` mid-reply loses only what
was generated since the last save (the app saves a few times a second).

Schema (``PRAGMA user_version`` = 4)::

    conversations(id, title, created, updated, settings)
    turns(id, conversation_id, position, user, assistant, stopped, complete, created, model, stop_reason)
    alternatives(id, conversation_id, position, branch, created)
    counters(name, value)

A conversation's number is what ``opt-tpu-tui export ID`` takes, so it is never given
again: ``counters`` keeps the last one given (row ``conversations``), and a new one is
one more than both it and the largest in use. (SQLite reuses the largest rowid once it
is deleted; AUTOINCREMENT would need the table rebuilt in an older file.) ``model`` is
the name of the model that wrote the reply, ``''`` for a reply an older version saved;
``stop_reason`` how the reply ended (``GenerationStats.stop_reason``: "max_new_tokens",
"context", "stop_string", ...), so a reopened reply carries the same mark; ``''`` unknown.

``turns`` is the conversation as shown. Editing the message at a position, or
regenerating the last reply, replaces the turns from that position on; they are kept
as one row of ``alternatives`` at that position (``branch``: JSON of those turns and the
alternatives among them), and showing an alternative swaps it with the turns shown, so
every variant is kept, whichever is shown. Variants at a position are numbered in the
order their first turn was written (``created``).

``settings`` is the conversation's own preamble and sampling values as JSON (overrides.py),
``{}`` for one that follows the global settings. ``complete`` is 0 while a reply streams; a turn found incomplete when a conversation
is reopened was interrupted (the app died), and is shown as stopped. No Textual import
here: the store is used from the UI thread and from the reply worker, serialised by
one lock.

What happens at open, and why:

- Only a damaged file is set aside (renamed ``history.sqlite3.corrupt-<time>``, with
  its -wal/-shm) and a fresh one started, with a warning: SQLite says corrupt or not a
  database, the integrity check fails, or the tables lack columns this version needs.
- A database another process holds (busy, locked) is not damaged: the open waits up to
  ``busy_wait`` seconds, then the store is *unavailable*: ``writable`` is False, reads
  return nothing, writes raise :class:`HistoryUnavailable`, and one warning line says
  so. Nothing is renamed. The same goes for a folder or file that cannot be written.
- Damage met later, while the store is in use (SQLite says corrupt or not a database on a
  query; text that is not UTF-8), makes the store unavailable for the rest of the run: the
  call that met it raises :class:`HistoryUnavailable` with the one line, and this
  instance's marker is left behind saying so, so the next start sets the file aside even
  if the integrity check would miss what SQLite met. The file is not touched meanwhile.
- The file deleted (``rm history.sqlite3*``) or replaced while the app runs: SQLite would
  go on writing into the unlinked file, and the session would be lost without a word. So
  each use compares the file at the path with the one opened (device and inode); when
  they differ, a new history is opened at the path (as at start) and used from then on. A
  reply being saved then says it is not saved, and the open conversation is saved again,
  whole, from what the app holds, with the next message (as one deleted elsewhere is).
- A folder made read-only while the app runs: the writes go on (SQLite's files are there
  already); the open marker cannot be removed at exit, which one warning line says, and
  the next start runs the integrity check.
- A symlink at the path is the user's: the mode of what it points to is not changed, and
  when that is not a database the link itself is what is set aside.
- ``PRAGMA quick_check`` reads the whole file (23 s for 786 MB), so it runs only after
  an unclean shutdown. Each open store holds an flock on its own marker file
  (``history.sqlite3.open-<pid>-<id>``) and removes it at :meth:`close`; a marker that
  nobody holds locked was left by an instance that died with the history open.
- Several instances may start at once on a fresh machine: the schema is created in a
  ``BEGIN IMMEDIATE`` transaction, with ``IF NOT EXISTS``, so the second finds it made.
- An older file is upgraded in place, in that same transaction: new tables come from
  ``IF NOT EXISTS``, and a column a table gained since (``ADDED_COLUMNS``) is added with
  ``ALTER TABLE``. A user's history is never set aside for being older, nor for being
  newer: a file a newer version wrote (a downgrade) makes the store unavailable, with
  the file untouched, since that version still needs it as it is.

Search (:meth:`HistoryStore.search`, the TUI's ctrl+f) scans titles and turns with LIKE:
no full-text table, so it needs nothing beyond the schema above. The variants not shown
are JSON, so they are parsed and compared in Python. A match comes back with the turn's
index, which the app opens the conversation at, and for one in a variant not shown, the
way to show it (:meth:`HistoryStore.show_variant`).
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import re
import sqlite3
import stat
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Tuple

from opt_tpu_tui import paths
from opt_tpu_tui.atomic import fsync_dir, move_aside
from opt_tpu_tui.chat import Turn
from opt_tpu_tui.errors import UserError, special_file
from opt_tpu_tui.overrides import Overrides
from opt_tpu_tui.safe_text import terminal_safe

SCHEMA_VERSION = 4
TITLE_LENGTH = 60
BUSY_WAIT = 5.0  # seconds an open waits for another process to let go of the database
SQLITE_BUSY, SQLITE_LOCKED, SQLITE_CORRUPT, SQLITE_NOTADB = 5, 6, 11, 26
BUSY_MESSAGES = ("database is locked", "database table is locked", "database schema is locked")
SEARCH_LIMIT = 50  # results a search returns at most: a screenful or two, and a bounded query
SNIPPET_BEFORE, SNIPPET_WIDTH = 20, 100  # characters of a snippet before its match, and in all
LIKE_ESCAPE = "\\"
CORRUPT_MESSAGES = ("file is not a database", "malformed", "file is encrypted or is not a database")
NOT_UTF8 = "could not decode to utf-8"  # Python's own error, no SQLite code: the app writes only UTF-8 text
INSERT_FINISHED_TURN = (  # a turn whose reply is done: one put back from a variant, or copied into a new conversation
    "INSERT INTO turns(conversation_id, position, user, assistant, stopped, complete, created, model, stop_reason) "
    "VALUES (?, ?, ?, ?, ?, 1, ?, ?, ?)"
)
SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    id INTEGER PRIMARY KEY,
    title TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    settings TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS turns (
    id INTEGER PRIMARY KEY,
    conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    user TEXT NOT NULL,
    assistant TEXT NOT NULL DEFAULT '',
    stopped INTEGER NOT NULL DEFAULT 0,
    complete INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    model TEXT NOT NULL DEFAULT '',
    stop_reason TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS turns_by_conversation ON turns(conversation_id, position);
CREATE TABLE IF NOT EXISTS alternatives (
    id INTEGER PRIMARY KEY,
    conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    branch TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS alternatives_by_conversation ON alternatives(conversation_id, position);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""
# Columns that tables already in older files gained later: (table, column, definition for ALTER TABLE ADD COLUMN).
# A fresh file gets them from SCHEMA; the definition must match SCHEMA's, with a default for the existing rows.
ADDED_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("conversations", "settings", "settings TEXT NOT NULL DEFAULT '{}'"),  # schema 3
    ("turns", "model", "model TEXT NOT NULL DEFAULT ''"),  # schema 4
    ("turns", "stop_reason", "stop_reason TEXT NOT NULL DEFAULT ''"),  # schema 4
)
# The numbers given so far in a file older than ``counters``: those in use (a deleted one is not known).
SEED_COUNTER = "INSERT OR IGNORE INTO counters(name, value) SELECT 'conversations', COALESCE(MAX(id), 0) FROM conversations"


class HistoryError(Exception):
    """The database file is damaged (raised inside; the store sets the file aside with a warning)."""


class NewerSchema(Exception):
    """The file was written by a newer version of the app: not damaged, so left exactly as it is."""


class ConversationGone(Exception):
    """The conversation a turn was to be written into is not in the history: another instance deleted it."""


class HistoryUnavailable(UserError):
    """A write to a history this instance could not open; the message is the one line the user saw at start."""


@dataclass(frozen=True)
class ConversationSummary:
    id: int
    title: str
    updated: float
    turns: int
    model: str = ""  # the model that wrote its latest reply shown ('' when an older version saved it)


Variant = Tuple[Tuple[int, float], ...]  # the alternatives, by (position, created), that lead to a variant


@dataclass(frozen=True)
class SearchHit:
    """Where a search matched: a conversation's title, or one field of one of its turns.

    ``turn`` is the turn's index in :meth:`HistoryStore.load`'s list (None for a title),
    so the app can open the conversation at it; for a match in a variant not shown, its
    index once :meth:`HistoryStore.show_variant` has shown that variant (``variant``).
    ``snippet`` is one line around the match,
    safe to print, and ``match`` the match's (start, end) in it, for highlighting.
    """

    conversation_id: int
    title: str
    turn: int | None
    field: str  # "title", "user" or "assistant"
    snippet: str
    match: tuple[int, int]
    variant: Variant = ()  # in a variant not shown: what show_variant takes to show it


def order_key(updated: float, cid: int, index: int | None, field: str, variant: bool = False) -> tuple[Any, ...]:
    """Where a search hit sorts: newest conversation first, then its title, the turns shown (latest first,
    the message before its reply), then the other variants' turns."""
    return (-float(updated), -int(cid), 0 if index is None else 1 + variant, -int(index or 0), field != "user")


def like_pattern(query: str) -> str:
    """A LIKE pattern matching ``query`` anywhere, its ``%``, ``_`` and escape character taken literally."""
    escaped = query.replace(LIKE_ESCAPE, LIKE_ESCAPE * 2).replace("%", LIKE_ESCAPE + "%").replace("_", LIKE_ESCAPE + "_")
    return f"%{escaped}%"


def one_line(text: str) -> str:
    """Runs of whitespace (newlines too) as one space, control characters visible: a snippet is one safe row."""
    return terminal_safe(re.sub(r"\s+", " ", text))


def snippet(text: str, query: str) -> tuple[str, tuple[int, int]]:
    """The part of ``text`` around the first case-insensitive ``query``, on one line, and the match's span in it.

    Python's IGNORECASE folds one character at a time, so offsets in ``text`` stay true;
    where only full case folding finds the match (ß and ss), the snippet is the start.
    """
    found = re.search(re.escape(query), text, re.IGNORECASE)
    start, end = (found.start(), found.end()) if found else (0, 0)
    left = max(0, start - SNIPPET_BEFORE)
    right = max(end, left + SNIPPET_WIDTH)
    before = ("…" if left else "") + one_line(text[left:start])
    matched = one_line(text[start:end])
    after = one_line(text[end:right]) + ("…" if right < len(text) else "")
    return before + matched + after, (len(before), len(before) + len(matched))


def title_for(user: str) -> str:
    """A one-line title from the first message."""
    line = " ".join(user.split())
    return line if len(line) <= TITLE_LENGTH else line[: TITLE_LENGTH - 1] + "…"


def sqlite_kind(error: sqlite3.Error) -> str:
    """"busy", "corrupt" or "other": the error code where Python gives it (3.11+), else the message.

    Text that is not UTF-8 is damage too: the bytes of a damaged page landed in a message.
    """
    code = getattr(error, "sqlite_errorcode", None)
    if NOT_UTF8 in str(error).lower():
        return "corrupt"
    if code is not None:
        primary = code & 0xFF  # extended codes keep the primary one in the low byte
        if primary in (SQLITE_BUSY, SQLITE_LOCKED):
            return "busy"
        return "corrupt" if primary in (SQLITE_CORRUPT, SQLITE_NOTADB) else "other"
    message = str(error).lower()
    if any(text in message for text in BUSY_MESSAGES):
        return "busy"
    return "corrupt" if any(text in message for text in CORRUPT_MESSAGES) else "other"


def quick_check(db: sqlite3.Connection) -> None:
    """Raise HistoryError if SQLite's integrity check finds damage (reads the whole file: not on every start)."""
    result = db.execute("PRAGMA quick_check").fetchone()[0]
    if result != "ok":
        raise HistoryError(f"damaged database ({result})")


@functools.lru_cache(maxsize=None)
def expected_columns() -> dict[str, frozenset[str]]:
    """Each table's columns, read from SCHEMA itself so the check cannot drift from it."""
    db = sqlite3.connect(":memory:")
    try:
        db.executescript(SCHEMA)
        tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {table: table_columns(db, table) for table in tables}
    finally:
        db.close()


def table_columns(db: sqlite3.Connection, table: str) -> frozenset[str]:
    return frozenset(row[1] for row in db.execute(f"PRAGMA table_info({table})"))


def check_schema(db: sqlite3.Connection) -> None:
    """Raise HistoryError if a table lacks a column, rather than failing later on the first query."""
    for table, wanted in expected_columns().items():
        missing = wanted - table_columns(db, table)
        if missing:
            raise HistoryError(f"the {table} table lacks {', '.join(sorted(missing))} (not this app's schema)")


def connect(path: Path, busy_wait: float, check: bool) -> sqlite3.Connection:
    """Open ``path``, retrying while another process holds it, up to ``busy_wait`` seconds; then the busy error."""
    deadline = time.monotonic() + busy_wait
    while True:
        try:
            return connect_once(path, max(deadline - time.monotonic(), 0.0), check)
        except sqlite3.OperationalError as error:  # some busy states skip SQLite's own wait
            if sqlite_kind(error) != "busy" or time.monotonic() >= deadline:
                raise
            time.sleep(0.05)


def connect_once(path: Path, timeout: float, check: bool) -> sqlite3.Connection:
    db = sqlite3.connect(path, check_same_thread=False, timeout=timeout)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=ON")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise NewerSchema(f"written by a newer opt-tpu-tui (schema {version}; this one reads {SCHEMA_VERSION})")
        if check:
            quick_check(db)
        if version < SCHEMA_VERSION:
            upgrade(db)
        check_schema(db)
    except BaseException:
        db.close()
        raise
    return db


def upgrade(db: sqlite3.Connection) -> None:
    """Create or upgrade the schema in place, in one ``BEGIN IMMEDIATE`` transaction.

    Statement by statement, not ``executescript`` (which commits a pending transaction
    first), so the version is read again under the write lock: another instance may
    have upgraded the file meanwhile, and a column must not be added twice. The schema
    is checked before the commit, so a file that is not this app's is not altered.
    """
    db.execute("BEGIN IMMEDIATE")
    try:
        if db.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
            for statement in SCHEMA.split(";"):  # SCHEMA has no ";" inside a statement
                if statement.strip():
                    db.execute(statement)
            for table, column, definition in ADDED_COLUMNS:
                if column not in table_columns(db, table):
                    db.execute(f"ALTER TABLE {table} ADD COLUMN {definition}")
            db.execute(SEED_COUNTER)
            check_schema(db)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


class OpenMarker:
    """This instance's ``<db>.open-*`` file, flocked while the history is open.

    The kernel drops the lock when a process dies, however it dies, so a marker nobody
    holds locked means an unclean shutdown. It is made under a hidden name and renamed
    once locked, so another instance never sees it unlocked.
    """

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def create(cls, db: Path) -> OpenMarker:
        path = db.with_name(f"{db.name}.open-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        hidden = path.with_name("." + path.name)
        fd = os.open(hidden, os.O_WRONLY | os.O_CREAT | os.O_EXCL, paths.PRIVATE_FILE)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.rename(hidden, path)
        return cls(path, fd)

    @staticmethod
    def left_behind(db: Path) -> list[Path]:
        """Markers of instances that died with ``db`` open."""
        stale = []
        for marker in db.parent.glob(f"{db.name}.open-*"):
            try:
                fd = os.open(marker, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO by that name must not block the start
            except OSError:
                continue  # its instance closed meanwhile
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    continue  # not one of ours
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                stale.append(marker)
            except BlockingIOError:
                pass  # its instance is alive
            finally:
                os.close(fd)
        return stale

    def abandon(self, reason: str) -> None:
        """Leave the marker unlocked with ``reason`` in it: the next start sets the file aside (:meth:`damage`)."""
        if self._fd is None:
            return
        os.write(self._fd, reason.encode("utf-8", "replace"))
        os.fsync(self._fd)
        os.close(self._fd)
        self._fd = None

    @staticmethod
    def damage(markers: list[Path]) -> str | None:
        """What a marker among ``markers`` (left behind) says SQLite found damaged while it ran, if one does."""
        for marker in markers:
            try:
                said = marker.read_text("utf-8", "replace").strip()
            except OSError:
                continue
            if said:
                return said
        return None

    def release(self) -> None:
        """Remove the marker (before unlocking it: unlocked and present means a crash).

        A folder made read-only meanwhile keeps it: one warning line, and the next start
        runs the integrity check, as after a crash (the history itself was closed cleanly).
        """
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        except OSError as error:
            print(
                f"opt-tpu-tui: warning: {self.path}: cannot remove it ({error.strerror or error}); "
                "the next start checks the history's integrity",
                file=sys.stderr,
            )
        finally:
            os.close(self._fd)
            self._fd = None


def file_identity(path: Path) -> tuple[int, int] | None:
    """The (device, inode) of the file at ``path`` (following a link), None when there is none."""
    try:
        found = os.stat(path)
    except OSError:
        return None
    return found.st_dev, found.st_ino


def side_files(path: Path) -> list[Path]:
    """The -wal and -shm files SQLite keeps beside ``path``."""
    return [path.with_name(path.name + suffix) for suffix in ("-wal", "-shm")]


def prepare_files(path: Path) -> bool:
    """Make the private data folder and an empty 0600 database file (SQLite gives -wal/-shm the same mode),
    tightening those an older version left readable; returns whether the database file is new."""
    paths.private_dir(path.parent)
    created = not path.exists()
    if path.is_symlink():  # the user's link: what it points to keeps its mode (set aside as the link if damaged)
        return created
    paths.private_file(path)
    for side in side_files(path):
        paths.tighten(side, paths.PRIVATE_FILE)
    return created


class HistoryStore:
    """Conversations on disk. Open with :meth:`open`; see the module docstring for what it does with trouble.

    ``writable`` False means the history could not be opened: reads return nothing and
    writes raise HistoryUnavailable with ``problem``, the line shown at start.
    """

    def __init__(
        self, path: Path, connection: sqlite3.Connection | None, marker: OpenMarker | None = None, problem: str = ""
    ) -> None:
        self.path = path
        self._db = connection
        self._marker = marker
        self._lock = threading.Lock()
        self.problem = problem
        self._busy_wait = BUSY_WAIT
        self._file = file_identity(path) if connection is not None else None  # the file opened, to notice its removal

    @property
    def writable(self) -> bool:
        return self._db is not None

    @classmethod
    def open(cls, path: Path | None = None, busy_wait: float = BUSY_WAIT) -> tuple[HistoryStore, str | None]:
        """Open (or create) the history; returns the store and a one-line warning, or None when all is well."""
        path = path or paths.history_file()
        kind = special_file(path)
        if kind is not None:  # opening a FIFO would wait for a writer forever; a folder is no file either
            return cls.unavailable(path, f"it is {kind}, not a database file (move it away)")
        try:
            created = prepare_files(path)
            stale = OpenMarker.left_behind(path)
            marker = OpenMarker.create(path)
        except (OSError, UserError) as error:
            return cls.unavailable(path, f"cannot write there ({getattr(error, 'strerror', None) or error})")
        damage = OpenMarker.damage(stale)
        if damage is not None:  # an earlier run met damage in use: the integrity check might not see it
            return cls.start_afresh(path, marker, damage, busy_wait, stale)
        try:
            db = connect(path, busy_wait, check=bool(stale))
        except NewerSchema as error:  # a downgrade: the newer app still needs the file as it is
            marker.release()
            return cls.unavailable(path, f"{error}, left as it is")
        except (sqlite3.DatabaseError, HistoryError) as error:
            kind = "corrupt" if isinstance(error, HistoryError) else sqlite_kind(error)
            if kind != "corrupt":
                marker.release()
                return cls.unavailable(path, "another opt-tpu-tui holds it" if kind == "busy" else str(error))
            return cls.start_afresh(path, marker, str(error), busy_wait, stale)
        for old in stale:
            old.unlink(missing_ok=True)
        if created:
            fsync_dir(path.parent)
        store = cls(path, db, marker)
        store._busy_wait = busy_wait
        return store, None

    @classmethod
    def unavailable(cls, path: Path, reason: str) -> tuple[HistoryStore, str]:
        problem = f"{path}: history unavailable, {reason}; conversations are not saved this run"
        return cls(path, None, problem=problem), problem

    @classmethod
    def start_afresh(
        cls, path: Path, marker: OpenMarker, problem: str, busy_wait: float, stale: list[Path]
    ) -> tuple[HistoryStore, str]:
        """Set a damaged ``path`` (and its -wal/-shm) aside and open a new one in its place.

        The markers of the runs that used it (``stale``) go too: the new file needs no check.
        """
        stamp = time.strftime("%Y%m%d-%H%M%S")
        aside = move_aside(path, stamp)
        for side in side_files(path):
            if side.exists():
                move_aside(side, stamp)
        for old in stale:
            old.unlink(missing_ok=True)
        prepare_files(path)
        return cls(path, connect(path, busy_wait, check=False), marker), (
            f"{path}: {problem}; moved it to {aside.name} and started a new history"
        )

    def close(self) -> None:
        """Close the database and remove this instance's open marker: the next start skips the integrity check."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
                self.problem = f"{self.path}: the history is closed"
            if self._marker is not None:
                self._marker.release()

    @contextmanager
    def _using(self) -> Iterator[sqlite3.Connection | None]:
        """The connection (None when unavailable), under the lock; damage SQLite reports becomes :meth:`_damaged`."""
        with self._lock:
            self._follow_the_file()
            try:
                yield self._db
            except sqlite3.DatabaseError as error:
                if self._db is None or sqlite_kind(error) != "corrupt":
                    raise
                raise self._damaged(error) from None

    def _follow_the_file(self) -> None:
        """When the file at the path is no longer the one open (deleted, or replaced), open the one there now.

        (Under the lock.) A new history is started at the path as at start; if that fails the
        store is unavailable from now on, with the reason, as it would be at start.
        """
        if self._db is None:
            return
        try:
            found = os.stat(self.path)
            if (found.st_dev, found.st_ino) == self._file:
                return
        except FileNotFoundError:
            pass
        except OSError:  # the folder cannot be searched now: the file open is still the one to use
            return
        self._db.close()
        self._db = None
        if self._marker is not None:
            self._marker.release()
            self._marker = None
        fresh, problem = HistoryStore.open(self.path, self._busy_wait)
        self._db, self._marker, self._file = fresh._db, fresh._marker, fresh._file
        self.problem = problem or ""

    def _damaged(self, error: sqlite3.Error) -> HistoryUnavailable:
        """SQLite found the file damaged while in use: unavailable from now on, and set aside at the next start.

        The connection is closed and this instance's marker left behind saying why, so the
        next start moves the file aside as one damaged at open (the file itself is not touched).
        """
        assert self._db is not None
        self._db.close()
        self._db = None
        said = "a message's text is not UTF-8" if NOT_UTF8 in str(error).lower() else one_line(str(error))[:80]
        self.problem = (
            f"{self.path}: the history is damaged ({said}); nothing more is saved this run, and the next start "
            f"moves it aside (to {self.path.name}.corrupt-<time>) and starts a new history"
        )
        if self._marker is not None:
            self._marker.abandon(f"SQLite found it damaged while in use ({said})")
            self._marker = None
        return HistoryUnavailable(self.problem)

    @contextmanager
    def _writing(self) -> Iterator[sqlite3.Connection]:
        """The connection inside a transaction, under the lock; HistoryUnavailable when there is none."""
        with self._using() as db:
            if db is None:
                raise HistoryUnavailable(self.problem)
            with db:
                yield db

    def _read(self, sql: str, parameters: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Rows of a query; none when the history is unavailable (HistoryUnavailable when it is found damaged)."""
        with self._using() as db:
            return [] if db is None else db.execute(sql, parameters).fetchall()

    # conversations

    def create_conversation(
        self, first_user: str, settings: Overrides | None = None, turns: Sequence[Turn] = ()
    ) -> int:
        """A new conversation titled after its first message, with the settings it was given before it was saved,
        and ``turns`` already in it (finished: what an instance held of a conversation deleted elsewhere)."""
        now = time.time()
        with self._writing() as db:
            conversation_id = self._next_conversation_id(db)
            db.execute(
                "INSERT INTO conversations(id, title, created, updated, settings) VALUES (?, ?, ?, ?, ?)",
                (conversation_id, title_for(first_user), now, now, (settings or Overrides()).to_json()),
            )
            db.executemany(
                INSERT_FINISHED_TURN,
                [(conversation_id, n, t.user, t.assistant, int(t.stopped), now, t.model, t.stop_reason or "")
                 for n, t in enumerate(turns)],
            )
            return conversation_id

    @staticmethod
    def _next_conversation_id(db: sqlite3.Connection) -> int:
        """A number no conversation had in this file (a deleted one's is not given again), and counted as given.

        Written before it is read: the write takes the file's write lock, so two instances never get the same one.
        """
        db.execute("INSERT OR IGNORE INTO counters(name, value) VALUES ('conversations', 0)")
        db.execute(
            "UPDATE counters SET value = MAX(value, (SELECT COALESCE(MAX(id), 0) FROM conversations)) + 1 "
            "WHERE name = 'conversations'"
        )
        return int(db.execute("SELECT value FROM counters WHERE name = 'conversations'").fetchone()[0])

    def conversation_settings(self, conversation_id: int) -> tuple[Overrides, str | None]:
        """A conversation's own settings, and one warning line when what is stored could not all be used."""
        rows = self._read("SELECT settings FROM conversations WHERE id = ?", (conversation_id,))
        if not rows:
            return Overrides(), None
        settings, problem = Overrides.from_json(rows[0][0])
        return settings, None if problem is None else f"conversation {conversation_id}: {problem}"

    def set_conversation_settings(self, conversation_id: int, settings: Overrides) -> None:
        """Replace a conversation's own settings (one UPDATE: atomic). Its place in the list does not change."""
        with self._writing() as db:
            db.execute("UPDATE conversations SET settings = ? WHERE id = ?", (settings.to_json(), conversation_id))

    def list_conversations(self) -> list[ConversationSummary]:
        """Newest first."""
        rows = self._read(
            "SELECT c.id, c.title, c.updated, COUNT(t.id), (SELECT m.model FROM turns m WHERE m.conversation_id = c.id "
            "AND m.model != '' ORDER BY m.position DESC LIMIT 1) FROM conversations c "
            "LEFT JOIN turns t ON t.conversation_id = c.id GROUP BY c.id ORDER BY c.updated DESC, c.id DESC"
        )
        return [
            ConversationSummary(int(i), str(title), float(updated), int(n), str(model or ""))
            for i, title, updated, n, model in rows
        ]

    def load(self, conversation_id: int) -> list[Turn]:
        """The turns of a conversation in order; an interrupted reply comes back marked stopped."""
        rows = self._read(
            "SELECT user, assistant, stopped, complete, model, stop_reason FROM turns WHERE conversation_id = ? "
            "ORDER BY position",
            (conversation_id,),
        )
        return [Turn(user=u, assistant=a, stopped=bool(s) or not c, model=m, stop_reason=r or None)
                for u, a, s, c, m, r in rows]

    def rename_conversation(self, conversation_id: int, title: str) -> str:
        """Give a conversation a new title (made one line, as titles are); returns it."""
        title = title_for(title)
        if not title:
            raise UserError("a conversation needs a title")
        with self._writing() as db:
            db.execute("UPDATE conversations SET title = ? WHERE id = ?", (title, conversation_id))
        return title

    def delete_conversation(self, conversation_id: int) -> None:
        with self._writing() as db:
            db.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,))

    # turns

    def add_turn(self, conversation_id: int, user: str, *, model: str = "") -> int:
        """Append a turn whose reply is about to stream (written by ``model``, the model's name); returns its id."""
        with self._writing() as db:
            position = db.execute(
                "SELECT COALESCE(MAX(position), -1) + 1 FROM turns WHERE conversation_id = ?", (conversation_id,)
            ).fetchone()[0]
            return self._insert_turn(db, conversation_id, position, user, model)

    def start_turn(self, conversation_id: int, position: int, user: str, *, model: str = "") -> int:
        """A turn at ``position`` whose reply is about to stream (written by ``model``); returns its id.

        The turns shown from ``position`` on (an edited message and what followed it, or
        the reply being regenerated) become an alternative there, in the same transaction:
        nothing is lost, and :meth:`switch_variant` brings them back. A lone turn with no
        reply (stopped before its first token) is not worth keeping and is dropped.
        :class:`ConversationGone` when another instance deleted the conversation.
        """
        with self._writing() as db:
            if db.execute("SELECT 1 FROM conversations WHERE id = ?", (conversation_id,)).fetchone() is None:
                raise ConversationGone(conversation_id)
            self._set_aside(db, conversation_id, position, keep_empty=False)
            return self._insert_turn(db, conversation_id, position, user, model)

    @staticmethod
    def _insert_turn(db: sqlite3.Connection, conversation_id: int, position: int, user: str, model: str) -> int:
        now = time.time()
        cursor = db.execute(
            "INSERT INTO turns(conversation_id, position, user, created, model) VALUES (?, ?, ?, ?, ?)",
            (conversation_id, position, user, now, model),
        )
        db.execute("UPDATE conversations SET updated = ? WHERE id = ?", (now, conversation_id))
        return int(cursor.lastrowid or 0)

    def take_back(self, turn_id: int) -> None:
        """Undo :meth:`start_turn` for a reply that failed before its first word (never given, so not kept): the
        turn goes, and what it set aside at its place (an edited message, a regenerated reply) is shown again."""
        with self._writing() as db:
            row = db.execute("SELECT conversation_id, position FROM turns WHERE id = ?", (turn_id,)).fetchone()
            if row is None:
                return
            conversation_id, position = row
            db.execute("DELETE FROM turns WHERE conversation_id = ? AND position >= ?", (conversation_id, position))
            latest = db.execute(
                "SELECT id, branch FROM alternatives WHERE conversation_id = ? AND position = ? ORDER BY id DESC LIMIT 1",
                (conversation_id, position),
            ).fetchone()
            if latest is None:
                return
            db.execute("DELETE FROM alternatives WHERE id = ?", (latest[0],))
            try:
                self._restore(db, conversation_id, position, json.loads(latest[1]))
            except (ValueError, KeyError, TypeError) as error:  # the transaction rolls back: the empty turn stays
                raise UserError(f"{self.path}: an alternative is damaged ({error!r}); it is left as it was") from None

    # alternatives

    @staticmethod
    def _set_aside(db: sqlite3.Connection, conversation_id: int, position: int, keep_empty: bool) -> None:
        """Move the turns from ``position`` on, with the alternatives among them, into one alternative there."""
        turns = db.execute(
            "SELECT user, assistant, stopped, complete, created, model, stop_reason FROM turns "
            "WHERE conversation_id = ? AND position >= ? ORDER BY position",
            (conversation_id, position),
        ).fetchall()
        nested = db.execute(
            "SELECT position, branch, created FROM alternatives WHERE conversation_id = ? AND position > ? ORDER BY id",
            (conversation_id, position),
        ).fetchall()
        if not turns:
            return
        db.execute("DELETE FROM turns WHERE conversation_id = ? AND position >= ?", (conversation_id, position))
        db.execute("DELETE FROM alternatives WHERE conversation_id = ? AND position > ?", (conversation_id, position))
        if not keep_empty and len(turns) == 1 and not turns[0][1] and not nested:
            return
        branch = {
            "turns": [
                {"user": u, "assistant": a, "stopped": bool(s) or not c, "created": t, "model": m, "stop_reason": r}
                for u, a, s, c, t, m, r in turns
            ],
            "alternatives": [
                {"position": p, "branch": b, "created": t} for p, b, t in nested  # as stored: not parsed here
            ],
        }  # fmt: skip
        db.execute(
            "INSERT INTO alternatives(conversation_id, position, branch, created) VALUES (?, ?, ?, ?)",
            (conversation_id, position, json.dumps(branch), turns[0][4]),
        )

    @staticmethod
    def _restore(db: sqlite3.Connection, conversation_id: int, position: int, branch: dict[str, Any]) -> None:
        """Put an alternative's turns back from ``position`` on, and the alternatives among them."""
        db.executemany(
            INSERT_FINISHED_TURN,
            [
                (conversation_id, position + offset, turn["user"], turn["assistant"], int(turn["stopped"]), turn["created"],
                 str(turn.get("model", "")), str(turn.get("stop_reason", "")))  # set aside by an older version: neither
                for offset, turn in enumerate(branch["turns"])
            ],
        )
        for nested in branch["alternatives"]:
            db.execute(
                "INSERT INTO alternatives(conversation_id, position, branch, created) VALUES (?, ?, ?, ?)",
                (conversation_id, nested["position"], nested["branch"], nested["created"]),
            )

    @staticmethod
    def _variants(db: sqlite3.Connection, conversation_id: int, position: int) -> list[tuple[float, int | None]]:
        """The variants at ``position`` in their order: (created, alternative id), None for the one shown."""
        shown = db.execute(
            "SELECT created FROM turns WHERE conversation_id = ? AND position = ?", (conversation_id, position)
        ).fetchone()
        rows = db.execute(
            "SELECT created, id FROM alternatives WHERE conversation_id = ? AND position = ?", (conversation_id, position)
        ).fetchall()
        variants: list[tuple[float, int | None]] = [(float(t), int(i)) for t, i in rows]
        if shown is not None:
            variants.append((float(shown[0]), None))
        return sorted(variants, key=lambda v: (v[0], -1 if v[1] is None else v[1]))

    def variants(self, conversation_id: int) -> dict[int, tuple[int, int]]:
        """Positions that have alternatives: which variant is shown there (from 1) and how many there are."""
        with self._using() as db:
            if db is None:
                return {}
            positions = db.execute(
                "SELECT DISTINCT position FROM alternatives WHERE conversation_id = ?", (conversation_id,)
            ).fetchall()
            found = {}
            for (position,) in positions:
                order = [v[1] for v in self._variants(db, conversation_id, position)]
                if None in order:
                    found[int(position)] = (order.index(None) + 1, len(order))
            return found

    def switch_variant(self, conversation_id: int, position: int, step: int) -> None:
        """Show the next (``step`` 1) or previous (-1) variant at ``position``, wrapping round.

        The turns shown from there on change places with it, in one transaction.
        """
        with self._writing() as db:
            order = [v[1] for v in self._variants(db, conversation_id, position)]
            if len(order) < 2 or None not in order:
                raise UserError("that message has no alternatives")
            chosen = order[(order.index(None) + step) % len(order)]
            assert chosen is not None  # the variant shown is only one of at least two
            self._swap_in(db, conversation_id, position, chosen)

    def show_variant(self, conversation_id: int, variant: Variant) -> None:
        """Show the variant a search found (:attr:`SearchHit.variant`): each alternative on the way to it, by
        (position, created), changes places with the turns shown there, all in one transaction."""
        with self._writing() as db:
            for position, created in variant:
                row = db.execute(
                    "SELECT id FROM alternatives WHERE conversation_id = ? AND position = ? AND created = ?",
                    (conversation_id, position, created),
                ).fetchone()
                if row is None:  # the transaction rolls back: nothing changes
                    raise UserError("that variant is not there any more (changed in another opt-tpu-tui?)")
                self._swap_in(db, conversation_id, position, int(row[0]))

    def _swap_in(self, db: sqlite3.Connection, conversation_id: int, position: int, chosen: int) -> None:
        """Alternative ``chosen`` at ``position`` changes places with the turns shown from there on."""
        (branch,) = db.execute("SELECT branch FROM alternatives WHERE id = ?", (chosen,)).fetchone()
        db.execute("DELETE FROM alternatives WHERE id = ?", (chosen,))
        self._set_aside(db, conversation_id, position, keep_empty=True)
        try:
            self._restore(db, conversation_id, position, json.loads(branch))
        except (ValueError, KeyError, TypeError) as error:  # the transaction rolls back: nothing changes
            raise UserError(f"{self.path}: that alternative is damaged ({error!r}); it is left as it was") from None

    def save_reply(
        self, turn_id: int, assistant: str, *, stopped: bool = False, complete: bool = False, stop_reason: str | None = None
    ) -> None:
        """Store the reply so far (called while it streams, and once more at its end, with how it ended)."""
        with self._writing() as db:
            cursor = db.execute(
                "UPDATE turns SET assistant = ?, stopped = ?, complete = ?, stop_reason = ? WHERE id = ?",
                (assistant, int(stopped), int(complete), stop_reason or "", turn_id),
            )
            if cursor.rowcount == 0:
                raise HistoryUnavailable(
                    f"{self.path}: this reply's conversation is no longer in the history (deleted in another "
                    "opt-tpu-tui, or the history file was removed); it is saved again, whole, with the next message"
                )
            db.execute(
                "UPDATE conversations SET updated = ? WHERE id = (SELECT conversation_id FROM turns WHERE id = ?)",
                (time.time(), turn_id),
            )


    # search

    def search(self, query: str, limit: int = SEARCH_LIMIT) -> list[SearchHit]:
        """Conversations whose title, or a turn's message or reply, holds ``query`` (case-insensitive).

        The turns of every variant count, shown or not. Newest conversation first, and
        within one its title, then its latest turns shown first, then the other variants'.
        LIKE with escaping, so no new table: the schema stays as it is. SQLite's LIKE folds
        only ASCII case; a query with other letters is compared casefolded, through a
        Python function on this connection (slower, so only then). Nothing when the
        history is unavailable or the query is blank.
        """
        query = query.strip()
        if not query or limit <= 0:
            return []
        fold = not query.isascii()
        column = "opt_fold({})" if fold else "{}"
        with self._using() as db:
            if db is None:
                return []
            if fold:
                db.create_function("opt_fold", 1, lambda text: text.casefold(), deterministic=True)
        where = " LIKE ? ESCAPE '\\'"
        matches = " UNION ALL ".join(
            f"SELECT c.id, c.title, c.updated, {position}, '{field}', {source} FROM {tables} "
            f"WHERE {column.format(source)}{where}"
            for field, source, position, tables in (
                ("title", "c.title", "NULL", "conversations c"),
                ("user", "t.user", "t.position", "turns t JOIN conversations c ON c.id = t.conversation_id"),
                ("assistant", "t.assistant", "t.position", "turns t JOIN conversations c ON c.id = t.conversation_id"),
            )
        )
        # The turn's index (what load() returns) is counted only for the hits kept.
        rows = self._read(
            f"WITH m(id, title, updated, position, field, text) AS ({matches}) "
            "SELECT id, title, updated, field, text, CASE WHEN position IS NULL THEN NULL ELSE "
            "(SELECT COUNT(*) FROM turns e WHERE e.conversation_id = m.id AND e.position < m.position) END "
            "FROM m ORDER BY updated DESC, id DESC, position IS NOT NULL, position DESC, field DESC LIMIT ?",
            (*[like_pattern(query.casefold() if fold else query)] * 3, limit),
        )
        found = [
            (order_key(updated, cid, index, field), cid, title, index, field, text, ())
            for cid, title, updated, field, text, index in rows
        ] + self._search_variants(query)
        hits: list[SearchHit] = []
        seen = set()
        for _, cid, title, index, field, text, variant in sorted(found, key=lambda hit: hit[0]):
            # A regenerated reply keeps its message in the variant it set aside: the same text at the same
            # place is one hit, the one shown (it sorts first), not one per variant.
            if (cid, index, field, text) in seen:
                continue
            seen.add((cid, index, field, text))
            if len(hits) == limit:
                break
            shown, span = snippet(text, query)
            hits.append(
                SearchHit(int(cid), str(title), None if index is None else int(index), field, shown, span, variant)
            )
        return hits

    def _search_variants(self, query: str) -> list[tuple[Any, ...]]:
        """Matches in the variants not shown, as search's rows (after the conversation's turns shown).

        Their text is JSON (nested alternatives JSON inside it), which LIKE cannot read
        through escapes, so each is parsed and compared casefolded; a damaged one is skipped.
        """
        wanted = query.casefold()
        rows = self._read(
            "SELECT a.conversation_id, c.title, c.updated, a.position, a.created, a.branch "
            "FROM alternatives a JOIN conversations c ON c.id = a.conversation_id"
        )
        found: list[tuple[Any, ...]] = []

        def walk(cid: int, title: str, updated: float, position: int, branch: str, path: Variant) -> None:
            try:
                parsed = json.loads(branch)
                turns = [(str(t["user"]), str(t["assistant"])) for t in parsed["turns"]]
                nested = [(int(n["position"]), float(n["created"]), str(n["branch"])) for n in parsed["alternatives"]]
            except (ValueError, KeyError, TypeError):
                return
            for offset, (user, assistant) in enumerate(turns):
                for field, text in (("user", user), ("assistant", assistant)):
                    if wanted in text.casefold():
                        key = (*order_key(updated, cid, position + offset, field, variant=True), path)
                        found.append((key, cid, title, position + offset, field, text, path))
            for at, created, inner in nested:
                walk(cid, title, updated, at, inner, (*path, (at, created)))

        for cid, title, updated, position, created, branch in rows:
            walk(int(cid), str(title), float(updated), int(position), str(branch), ((int(position), float(created)),))
        return found
