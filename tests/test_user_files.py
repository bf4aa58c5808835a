"""The command line when the config or data folder is unusable, and when settings need no write.

Each case gives one clear line naming the path and loses nothing. ``-p``/``-c`` never
touch the data folder (history is the TUI's), so a broken data folder is tested where
it matters: the TUI still starts, with the history unavailable and one warning.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from files_support import refuse_writes_under
from opt_tpu_tui import paths
from opt_tpu_tui.cli import main
from opt_tpu_tui.tui.app import OptTuiApp

GREEDY = ["--temperature", "0", "--max-new-tokens", "4", "-q"]
SAVED = json.dumps({"theme": "light"})


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the native-output log


def file_in_the_way(folder: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A regular file where the folder should be; returns the file, which must come through untouched."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    folder.write_text(SAVED)
    return folder


def read_only(folder: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The folder with a settings file in it, behind a simulated read-only mount (see files_support)."""
    folder.mkdir(parents=True)
    (folder / "settings.json").write_text(SAVED)
    refuse_writes_under(folder, monkeypatch)
    return folder / "settings.json"


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("make_trouble", [file_in_the_way, read_only], ids=["config-folder-is-a-file", "read-only"])
def test_prompt_with_an_unusable_config_folder_is_one_line_and_loses_nothing(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tiny_model: Path,
    make_trouble: Callable[[Path, pytest.MonkeyPatch], Path],
) -> None:  # fmt: skip
    kept = make_trouble(paths.config_dir(), monkeypatch)
    code = main(["--model", str(tiny_model), "-p", "hi", *GREEDY])
    out, err = capsys.readouterr()
    line = one_line(err)
    if make_trouble is read_only:  # the settings read; only remembering the model fails, and the reply goes on
        assert code == 0 and out.strip() and line.startswith("opt-tpu-tui: warning: not remembered as the last model")
    else:
        assert code == 2 and line.startswith("opt-tpu-tui: error: ")
    assert str(paths.config_dir()) in line
    assert kept.read_text() == SAVED


@pytest.fixture
def tui_start(monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    """Start the TUI as far as its first frame would be: what it would have shown is recorded instead."""
    seen: dict[str, object] = {}

    def run(app: OptTuiApp, **options: object) -> None:
        seen.update(warnings=list(app.startup_warnings), writable=app.store.writable, options=options)

    monkeypatch.setattr(OptTuiApp, "run", run)
    monkeypatch.setattr("opt_tpu_tui.tui.check_terminal", lambda: None)  # pytest's stdin is no terminal
    return seen


def data_folder_is_a_file(monkeypatch: pytest.MonkeyPatch) -> Path:
    return file_in_the_way(paths.data_dir(), monkeypatch)


def read_only_data_folder(monkeypatch: pytest.MonkeyPatch) -> Path:
    paths.data_dir().mkdir(parents=True)
    refuse_writes_under(paths.data_dir(), monkeypatch)
    return paths.data_dir()


@pytest.mark.parametrize(
    "make_trouble", [data_folder_is_a_file, read_only_data_folder], ids=["data-folder-is-a-file", "read-only"]
)
def test_the_tui_starts_without_history_when_the_data_folder_is_unusable(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tiny_model: Path,
    tui_start: dict[str, object], make_trouble: Callable[[pytest.MonkeyPatch], Path],
) -> None:  # fmt: skip
    kept = make_trouble(monkeypatch)
    assert main(["--model", str(tiny_model)]) == 0
    (warning,) = tui_start["warnings"]  # type: ignore[misc]
    assert str(paths.data_dir()) in warning and "history unavailable" in warning and "\n" not in warning
    assert tui_start["writable"] is False
    assert kept.read_text() == SAVED if kept.is_file() else list(kept.iterdir()) == []


def test_the_tui_with_a_file_for_a_config_folder_is_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tiny_model: Path, tui_start: dict[str, object]
) -> None:
    """Settings cannot even be read: the user must move the file, so the app says so rather than start."""
    kept = file_in_the_way(paths.config_dir(), monkeypatch)
    assert main(["--model", str(tiny_model)]) == 2 and tui_start == {}
    assert str(paths.config_dir()) in one_line(capsys.readouterr().err) and kept.read_text() == SAVED


@pytest.mark.parametrize("mode", [["-p", "hi"], ["-c"]])
def test_prompt_and_chat_write_the_last_model_only_when_it_changed(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tiny_model: Path, mode: list[str]
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("/quit\n"))
    assert main(["--model", str(tiny_model), *mode, *GREEDY]) == 0
    first = paths.settings_file().stat()
    assert json.loads(paths.settings_file().read_text())["last_model"] == str(tiny_model.resolve())
    assert main(["--model", str(tiny_model), *mode, *GREEDY]) == 0
    again = paths.settings_file().stat()
    assert (again.st_ino, again.st_mtime_ns) == (first.st_ino, first.st_mtime_ns)
