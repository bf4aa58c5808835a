"""Settings file: defaults, round trip, refusal of bad values, corrupt files set aside, atomic writes."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from opt_tpu_tui import paths
from opt_tpu_tui.atomic import atomic_write
from opt_tpu_tui.config import Settings, load_settings, save_settings
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
        backend="cpu",
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
        (json.dumps({"backend": "gpu"}), "backend must be one of"),
        (json.dumps([1, 2]), "expected a JSON object"),
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
