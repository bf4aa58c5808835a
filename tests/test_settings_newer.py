"""settings.json written by a newer version keeps what this version does not know (issue 22, item 18)."""

from __future__ import annotations

import json

import pytest

from opt_tpu_tui import paths
from opt_tpu_tui.config import VERSION, SettingsNotSaved, load_settings, update_settings_file


def write(data: dict) -> None:
    paths.settings_file().parent.mkdir(parents=True, exist_ok=True)
    paths.settings_file().write_text(json.dumps(data))


def test_keys_this_version_does_not_know_survive_a_save() -> None:
    write({
        "version": 99, "future_key": {"nested": [1, 2]}, "theme": "dark",
        "sampling": {"temperature": 0.5, "min_p": 0.05},
    })  # fmt: skip
    assert load_settings()[0].sampling.temperature == 0.5
    update_settings_file({"theme": "light", "sampling": {"top_k": 7}})
    data = json.loads(paths.settings_file().read_text())
    assert data["future_key"] == {"nested": [1, 2]}
    assert data["sampling"]["min_p"] == 0.05 and data["sampling"]["top_k"] == 7 and data["sampling"]["temperature"] == 0.5
    assert data["version"] == 99  # not written back as this version's
    assert data["theme"] == "light"


def test_a_file_of_this_version_keeps_its_version_and_unknown_keys_too() -> None:
    write({"version": VERSION, "plugin": True})
    update_settings_file({"theme": "light"})
    data = json.loads(paths.settings_file().read_text())
    assert (data["version"], data["plugin"], data["theme"]) == (VERSION, True, "light")


def test_a_newer_files_value_this_version_refuses_is_left_as_it_is() -> None:
    """Not damaged: the newer version still needs it. The defaults serve this run, with one warning."""
    original = {"version": 99, "side_pane": "floating", "sampling": {"temperature": 0.3}}
    write(original)
    settings, warning = load_settings()
    assert settings.side_pane == "stats" and warning is not None
    assert "newer opt-tpu-tui (version 99)" in warning and "leaving the file as it is" in warning
    with pytest.raises(SettingsNotSaved):
        update_settings_file({"theme": "light"})
    assert json.loads(paths.settings_file().read_text()) == original
    assert [p.name for p in paths.settings_file().parent.iterdir() if "corrupt" in p.name] == []
