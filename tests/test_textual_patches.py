"""The Textual internals the app patches are checked against the versions they were written for (textual_patches.py):
an unknown version is one warning line at start-up, and the app runs all the same."""

from __future__ import annotations

import pytest
import textual
from tiny import train_tokenizer
from tui_support import make_app, ready

from opt_tpu_tui.tokenizer import Tokenizer
from opt_tpu_tui.tui import textual_patches
from opt_tpu_tui.tui.widgets.conversation import Notice


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    return Tokenizer.from_dir(train_tokenizer(tmp_path_factory.mktemp("tok")))


def test_the_versions_written_for_pass_and_another_is_named_in_one_line() -> None:
    assert textual_patches.WRITTEN_FOR == ("8.2", "6.2")
    for version in ("8.2.0", "8.2.7", "6.2.1"):
        assert textual_patches.version_warning(version) is None
    warning = textual_patches.version_warning("9.0.1")
    assert warning is not None and "\n" not in warning
    assert "Textual 9.0.1" in warning and "8.2.x" in warning and "6.2.x" in warning
    assert textual_patches.version_warning("8.20.0") is not None  # major.minor, not a prefix
    assert textual_patches.version_warning("") is None  # no metadata: nothing to say


def test_the_installed_textual_is_one_written_for() -> None:
    """What this suite runs on is what the patches were written for (a new Textual in the venv fails here first)."""
    assert textual_patches.installed_version().startswith(("8.2.", "6.2."))
    assert textual_patches.version_warning() is None


@pytest.mark.anyio
async def test_an_unknown_textual_version_is_one_warning_and_the_app_still_runs(
    tokenizer: Tokenizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(textual_patches, "installed_version", lambda: "9.1.0")
    app, _ = make_app(tokenizer)
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        warnings = [str(n.render()) for n in app.screen.query(Notice) if "Textual 9.1.0" in str(n.render())]
        assert len(warnings) == 1 and "8.2.x and 6.2.x" in warnings[0]
        assert app.is_running


def test_the_patch_modules_take_textuals_internals_from_the_one_module() -> None:
    """No other module of the app imports a private Textual module (textual._*)."""
    import pathlib
    import re

    package = pathlib.Path(textual_patches.__file__).resolve().parents[1]
    private = re.compile(r"^\s*(from|import) textual\._", re.MULTILINE)
    offenders = [
        str(path.relative_to(package)) for path in package.rglob("*.py")
        if path.name != "textual_patches.py" and private.search(path.read_text(encoding="utf-8"))
    ]  # fmt: skip
    assert offenders == []
    assert textual.__name__ == "textual"
