"""The Textual chat UI. ``run`` is what ``opt-tpu-tui`` calls with neither -p nor -c."""

from __future__ import annotations

from pathlib import Path

from opt_tpu_tui.backends.base import Backend
from opt_tpu_tui.errors import UserError
from opt_tpu_tui.tokenizer import Tokenizer


def model_loader(model_dir: Path, backend: str, context: int | None):  # type: ignore[no-untyped-def]
    """A loader for the app's load worker: checks the directory, reads the tokenizer, opens the backend."""

    def load() -> tuple[Backend, Tokenizer]:
        from opt_tpu_tui.backends import open_backend

        if not model_dir.is_dir():
            raise UserError(f"{model_dir}: no such model directory")
        if context is not None and context < 2:
            raise UserError(f"--context must be at least 2 tokens, got {context}")
        tokenizer = Tokenizer.from_dir(model_dir)
        return open_backend(model_dir, backend, context), tokenizer

    return load


def run(model_dir: Path | None, backend: str, context: int | None, demo: bool) -> int:
    """Start the app; returns the process exit code.

    With no ``model_dir`` the last model used (Settings.last_model) is opened; it is
    remembered only after it loads, and never for the demo model.
    """
    from opt_tpu_tui.config import load_settings
    from opt_tpu_tui.history import HistoryStore
    from opt_tpu_tui.tui.app import OptTuiApp

    settings, settings_warning = load_settings()
    store, history_warning = HistoryStore.open()
    warnings = [w for w in (settings_warning, history_warning) if w]
    if model_dir is None and not demo and settings.last_model:
        model_dir = Path(settings.last_model)
        if backend == "auto":
            backend = settings.backend
    loader = model_loader(Path(model_dir), backend, context) if model_dir is not None else None

    def remember(_: Backend) -> None:
        if model_dir is not None and not demo:
            app.update_settings(last_model=str(Path(model_dir).resolve()), backend=backend)

    app = OptTuiApp(
        settings=settings,
        store=store,
        loader=loader,
        model_label=Path(model_dir).name if model_dir is not None else "no model",
        backend_label=backend,
        demo=demo,
        warnings=warnings,
        on_model_ready=remember,
    )
    try:
        app.run()
    finally:
        store.close()
    return app.return_code or 0


__all__ = ["run", "model_loader"]
