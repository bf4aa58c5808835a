"""Settings file: defaults, round trip, refusal of bad values, corrupt files set aside, atomic writes,
private permissions, several instances sharing the file, symlinks."""

from __future__ import annotations

import json
import os
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from files_support import mode
from opt_tpu_tui import paths
from opt_tpu_tui.atomic import atomic_write
from opt_tpu_tui.config import Settings, changed_values, load_settings, save_settings, update_settings_file
from opt_tpu_tui.errors import UserError
from opt_tpu_tui.sampling import SamplingSettings


def test_defaults_without_a_file() -> None:
    settings, warning = load_settings()
    assert settings == Settings() and warning is None
    assert not paths.settings_file().exists()  # loading never writes


def test_round_trip_in_the_config_dir(tmp_path: Path) -> None:
    settings = Settings(
        sampling=SamplingSettings(max_new_tokens=64, temperature=0.0, seed=7),
        preamble="Be brief.",
        theme="light",
        last_model="/models/opt-125m",
        side_pane="settings",
    )
    save_settings(settings)
    assert paths.settings_file() == tmp_path / "config" / "opt-tpu-tui" / "settings.json"
    data = json.loads(paths.settings_file().read_text())
    assert data["version"] == 1 and data["sampling"]["seed"] == 7
    assert load_settings() == (settings, None)


def test_missing_keys_take_defaults_and_unknown_keys_are_ignored() -> None:
    atomic_write(paths.settings_file(), json.dumps({"theme": "light", "sampling": {"top_k": 5}, "future": 1}))
    settings, warning = load_settings()
    assert warning is None
    assert settings == Settings(theme="light", sampling=SamplingSettings(top_k=5))


def test_save_refuses_out_of_range_values() -> None:
    with pytest.raises(UserError, match="temperature"):
        save_settings(Settings(sampling=SamplingSettings(temperature=9.0)))
    with pytest.raises(UserError, match="side_pane"):
        save_settings(Settings(side_pane="left"))
    assert not paths.settings_file().exists()


@pytest.mark.parametrize(
    "content, problem",
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"sampling": {"top_p": 7}}), "top_p must be between"),
        (json.dumps([1, 2]), "expected a JSON object"),
        pytest.param("[" * 100_000, "nested too deeply", id="deep"),  # json.loads raised RecursionError
        pytest.param('{"theme": ' + "7" * 5000 + "}", "not valid JSON", id="huge-int"),  # int(): ValueError
    ],
)
def test_corrupt_or_invalid_file_is_moved_aside(content: str, problem: str) -> None:
    path = paths.settings_file()
    path.parent.mkdir(parents=True)
    path.write_text(content)
    settings, warning = load_settings()
    assert settings == Settings()
    assert warning is not None and problem in warning and "settings.json.corrupt-" in warning
    (aside,) = path.parent.glob("settings.json.corrupt-*")
    assert aside.read_text() == content
    assert not path.exists()  # never silently overwritten: the next save starts a new file
    save_settings(replace(settings, theme="light"))
    assert aside.read_text() == content


def test_atomic_write_replaces_whole_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "file.txt"
    atomic_write(target, "one")
    atomic_write(target, "two")
    assert target.read_text() == "two"
    assert [p.name for p in target.parent.iterdir()] == ["file.txt"]
    assert target.stat().st_mode & 0o777 == 0o600


def test_a_fresh_config_folder_and_file_are_private_under_umask_022(umask_022: None) -> None:
    update_settings_file({"theme": "light"})
    assert mode(paths.config_dir()) == 0o700
    assert mode(paths.settings_file()) == 0o600
    assert all(mode(p) == 0o600 for p in paths.config_dir().iterdir())  # the lock file too


@pytest.mark.parametrize("content", [json.dumps({"theme": "light"}), "{not json"], ids=["valid", "corrupt"])
def test_an_older_world_readable_folder_and_file_are_tightened_on_load(umask_022: None, content: str) -> None:
    folder = paths.config_dir()
    folder.mkdir(parents=True, mode=0o755)
    paths.settings_file().write_text(content)
    os.chmod(paths.settings_file(), 0o644)
    load_settings()
    assert mode(folder) == 0o700
    assert [mode(p) for p in folder.iterdir()] == [0o600]  # settings.json, or its corrupt copy


def test_two_instances_keep_each_others_changes() -> None:
    """A and B started from the same file; each writes only what it changed, sampling per field."""
    started = Settings()
    save_settings(started)
    a = replace(started, theme="light", sampling=replace(started.sampling, temperature=0.2))
    b = replace(started, side_pane="hidden", sampling=replace(started.sampling, top_k=3))
    update_settings_file(changed_values(started, a))
    result = update_settings_file(changed_values(started, b))
    sampling = replace(started.sampling, temperature=0.2, top_k=3)
    expected = replace(started, theme="light", side_pane="hidden", sampling=sampling)
    assert result == expected and load_settings() == (expected, None)


def test_concurrent_updates_of_different_keys_all_land() -> None:
    """Threads open the lock file separately, so flock serialises them as it does processes."""
    fields = ["max_new_tokens", "top_k", "seed", "temperature"]

    def writer(field: str) -> None:
        for n in range(1, 16):
            update_settings_file({"sampling": {field: n if field != "temperature" else n / 10}})

    threads = [threading.Thread(target=writer, args=(field,)) for field in fields]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    sampling = load_settings()[0].sampling
    assert (sampling.max_new_tokens, sampling.top_k, sampling.seed, sampling.temperature) == (15, 15, 15, 1.5)


def test_an_update_that_changes_nothing_does_not_write() -> None:
    save_settings(Settings(theme="light"))
    before = paths.settings_file().stat()
    assert update_settings_file(changed_values(Settings(), Settings())) == Settings(theme="light")
    after = paths.settings_file().stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_a_refused_update_writes_nothing() -> None:
    save_settings(Settings(theme="light"))
    with pytest.raises(UserError, match="top_p"):
        update_settings_file({"theme": "dark", "sampling": {"top_p": 7}})
    assert load_settings()[0] == Settings(theme="light")


def test_a_symlinked_settings_file_is_written_through(tmp_path: Path) -> None:
    target = tmp_path / "dotfiles" / "opt-settings.json"
    target.parent.mkdir()
    target.write_text(json.dumps({"theme": "light"}))
    link = paths.settings_file()
    link.parent.mkdir(parents=True)
    link.symlink_to(target)
    update_settings_file({"side_pane": "hidden"})
    assert link.is_symlink() and link.resolve() == target
    assert json.loads(target.read_text())["side_pane"] == "hidden"
    assert load_settings()[0] == Settings(theme="light", side_pane="hidden")
