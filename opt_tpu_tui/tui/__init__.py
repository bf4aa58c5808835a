"""The Textual chat UI. ``run`` is what ``opt-tpu-tui`` calls with neither -p nor -c."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from opt_tpu_tui import paths
from opt_tpu_tui.backends import Backend, open_model
from opt_tpu_tui.config import Settings
from opt_tpu_tui.native_output import native_stdout_to
from opt_tpu_tui.overrides import Overrides
from opt_tpu_tui.tokenizer import Tokenizer


def model_loader(model_dir: Path, backend: str, context: int | None) -> Callable[[], tuple[Backend, Tokenizer]]:
    """A loader for the app's load worker, which calls it off the UI thread."""
    return lambda: open_model(model_dir, backend, context)


def run(
    model_dir: Path, backend: str, context: int | None, demo: bool, settings: Settings, warnings: list[str],
    session: Overrides | None = None,
) -> int:
    """Start the app on ``model_dir``; returns the process exit code.

    The command line has already resolved the model (``--model``, the last model
    used, or the demo) and read the settings; ``warnings`` are shown on start, ``session`` holds the
    values given on the command line for this run (sampling flags, ``--preamble``). The
    model is remembered as the last one used once it loads, unless it is the demo.
    """
    from opt_tpu_tui.history import HistoryStore
    from opt_tpu_tui.tui.app import OptTuiApp

    store, history_warning = HistoryStore.open()

    def remember(_: Backend) -> None:
        if not demo:
            app.update_settings(last_model=str(model_dir.resolve()))  # not the backend: --backend is per run

    app = OptTuiApp(
        settings=settings,
        store=store,
        loader=model_loader(model_dir, backend, context),
        model_label=model_dir.name,
        backend_label=backend,
        demo=demo,
        warnings=[*warnings, *([history_warning] if history_warning else [])],
        on_model_ready=remember,
        session=session,
    )
    try:
        with native_stdout_to(paths.native_output_log()):
            app.run(mouse=settings.mouse)
    finally:
        store.close()
    return exit_code(app.return_code or 0, app.load_error)


def exit_code(code: int, load_error: str | None) -> int:
    """The app's exit code; 2, with the error line on stderr, when the model never loaded (a wrong --backend,
    a broken model folder): the UI stays open to show it, but a script or the shell must see the failure too."""
    if code == 0 and load_error is not None:
        print(f"opt-tpu-tui: error: {load_error}", file=sys.stderr)
        return 2
    return code


__all__ = ["run", "model_loader"]
