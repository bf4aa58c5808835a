"""Issue 22's edges of the history and the -c line history: a regenerated message found once, numbers never
reused, the model that replied kept, FIFOs that must not hang, and files removed or locked while in use."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
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
