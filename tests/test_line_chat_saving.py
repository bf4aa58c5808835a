"""``-c`` keeps its conversations as the UI does, echoes piped input, and replies with a read-only home
(issue 22, items 7 and 17)."""

from __future__ import annotations

import errno
import io
import sys
from pathlib import Path

import pytest

from opt_tpu_tui import cli
from opt_tpu_tui.history import HistoryStore

GREEDY = ["--temperature", "0", "--max-new-tokens", "6", "--repetition-penalty", "1"]


def chat(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, stdin: str, *args: str) -> tuple[int, str, str]:
    """``opt-tpu-tui -c`` with ``stdin`` piped in (not a terminal)."""
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = cli.main(["-c", "-q", *GREEDY, *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_piped_chat_is_echoed_and_saved_like_the_uis(capsys, monkeypatch, tiny_model: Path) -> None:
    code, out, err = chat(capsys, monkeypatch, "hello\nsecond\n/new\nthird\n", "--model", str(tiny_model))
    assert code == 0, err
    assert "you> hello\nbot> " in out and "you> second\nbot> " in out and "you> third\nbot> " in out
    assert "you> bot>" not in out

    store, warning = HistoryStore.open()
    try:
        assert warning is None
        listed = store.list_conversations()  # newest first
        assert [(c.title, c.turns) for c in listed] == [("third", 1), ("hello", 2)]
        first = store.load(listed[1].id)
        assert [turn.user for turn in first] == ["hello", "second"]
        for turn in first:  # what was saved is what was shown
            assert f"you> {turn.user}\nbot> {turn.assistant}\n" in out
        assert [hit.conversation_id for hit in store.search("second")] == [listed[1].id]
    finally:
        store.close()
    assert cli.main(["export", "--last", "-o", "-"]) == 0
    exported = capsys.readouterr().out
    assert "third" in exported and "hello" not in exported


@pytest.fixture
def read_only_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Settings, history and cache folders under a home that cannot be written (tests run as root, where chmod
    does not stop a write: making a folder there fails with EROFS, as on a read-only mount)."""
    home = tmp_path / "home"
    home.mkdir()
    for variable in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_CACHE_HOME"):
        monkeypatch.setenv(variable, str(home / variable.lower()))
    real_mkdir = Path.mkdir

    def mkdir(self: Path, *args: object, **kwargs: object) -> None:
        if home in self.parents:
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        real_mkdir(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "mkdir", mkdir)
    return home


def test_prompt_replies_with_a_read_only_home(capsys, read_only_home: Path, tiny_model: Path) -> None:
    code = cli.main(["--model", str(tiny_model), "-p", "Hi", "-q", *GREEDY])
    out, err = capsys.readouterr()
    assert code == 0 and out.strip(), err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("opt-tpu-tui: warning: not remembered as the last model used")
    assert not any(read_only_home.iterdir())


def test_chat_replies_with_a_read_only_home(capsys, monkeypatch, read_only_home: Path, tiny_model: Path) -> None:
    code, out, err = chat(capsys, monkeypatch, "hello\n", "--model", str(tiny_model))
    assert code == 0, err
    assert "you> hello\nbot> " in out and out.split("bot> ", 1)[1].strip()
    lines = err.strip().splitlines()  # the history's warning and the last model's, one line each
    assert len(lines) == 2 and all(line.startswith("opt-tpu-tui: warning: ") for line in lines), err
    assert "conversations are not saved this run" in err
