"""The -c history file: entries of several lines, damage skipped, trimming, failures said once."""

from __future__ import annotations

import json
from pathlib import Path

from opt_tpu_tui.line_history import KEEP, LineHistory


def test_entries_round_trip_and_bad_lines_are_skipped(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    history = LineHistory(tmp_path / "app" / "h.jsonl")
    assert history.load() == []
    for message in ("one", "two\nlines", "h\udcffi"):  # the last is not UTF-8 (a refused line): not kept
        history.append(message)
    with open(history.path, "a") as file:
        file.write('{"not": "a string"}\nnot json\n"  "\n')
    assert LineHistory(history.path).load() == ["one", "two\nlines"]
    assert capsys.readouterr().err == ""


def test_a_long_file_is_trimmed_to_the_last_entries(tmp_path: Path) -> None:
    path = tmp_path / "h.jsonl"
    path.write_text("".join(json.dumps(f"m{i}") + "\n" for i in range(2 * KEEP)))
    entries = LineHistory(path).load()
    assert entries == [f"m{i}" for i in range(KEEP, 2 * KEEP)]
    assert len(path.read_text().splitlines()) == KEEP and path.stat().st_mode & 0o777 == 0o600


def test_an_unwritable_history_is_said_once_and_kept_in_memory(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    (tmp_path / "app").write_text("a file where the folder should be")
    history = LineHistory(tmp_path / "app" / "h.jsonl")
    history.append("one")
    history.append("two")
    err = capsys.readouterr().err
    assert err.count("warning") == 1 and "the line history stays in memory" in err
