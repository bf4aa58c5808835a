"""The Textual chat UI. ``run`` is what ``opt-tpu-tui`` calls with neither -p nor -c."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from opt_tpu_tui import paths
from opt_tpu_tui.backends import Backend, open_model
from opt_tpu_tui.config import Settings
from opt_tpu_tui.tokenizer import Tokenizer


def model_loader(model_dir: Path, backend: str, context: int | None) -> Callable[[], tuple[Backend, Tokenizer]]:
    """A loader for the app's load worker, which calls it off the UI thread."""
    return lambda: open_model(model_dir, backend, context)


@contextmanager
def native_stdout_to(path: Path) -> Iterator[None]:
    """Point file descriptor 1 at ``path`` for the block, then back.

    Textual draws on stderr, but the TPU runtime's C libraries print to stdout (the
    simulator on every launch, bmrt when it loads a model), which would land in the
    middle of the screen. Where ``path`` cannot be written, nothing changes.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        log = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    except OSError:
        yield
        return
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(log, 1)
    os.close(log)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def run(model_dir: Path, backend: str, context: int | None, demo: bool, settings: Settings, warnings: list[str]) -> int:
    """Start the app on ``model_dir``; returns the process exit code.

    The command line has already resolved the model (``--model``, the last model
    used, or the demo) and read the settings; ``warnings`` are shown on start. The
    model is remembered as the last one used once it loads, unless it is the demo.
    """
    from opt_tpu_tui.history import HistoryStore
    from opt_tpu_tui.tui.app import OptTuiApp

    store, history_warning = HistoryStore.open()

    def remember(_: Backend) -> None:
        if not demo:
            app.update_settings(last_model=str(model_dir.resolve()), backend=backend)

    app = OptTuiApp(
        settings=settings,
        store=store,
        loader=model_loader(model_dir, backend, context),
        model_label=model_dir.name,
        backend_label=backend,
        demo=demo,
        warnings=[*warnings, *([history_warning] if history_warning else [])],
        on_model_ready=remember,
    )
    try:
        with native_stdout_to(paths.native_output_log()):
            app.run()
    finally:
        store.close()
    return app.return_code or 0


__all__ = ["run", "model_loader"]
