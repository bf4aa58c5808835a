"""Inference backends behind one protocol; ``open_backend`` picks and builds one."""

from __future__ import annotations

from pathlib import Path

from opt_tpu_tui.backends.base import Backend
from opt_tpu_tui.errors import UserError
from opt_tpu_tui.tokenizer import Tokenizer

BACKENDS = ("auto", "cpu", "bmrt", "sail")


def open_backend(model_dir: Path, kind: str = "auto", context: int | None = None) -> Backend:
    """Build the backend ``kind`` for ``model_dir``; "auto" picks what the directory holds."""
    if kind not in BACKENDS:
        raise UserError(f"unknown backend {kind!r}: choose one of {', '.join(BACKENDS)}")
    if kind in ("auto", "cpu"):
        from opt_tpu_tui.backends.cpu import CPUBackend

        return CPUBackend(Path(model_dir), context)
    raise UserError(f"backend {kind!r} is not available yet (the TPU conversion is still being built); use --backend cpu")


def open_model(model_dir: Path, kind: str = "auto", context: int | None = None) -> tuple[Backend, Tokenizer]:
    """The tokenizer and a backend for ``model_dir``: what every front end needs to chat.

    The tokenizer is read first, as it is cheap and its absence is the commonest mistake.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise UserError(f"{model_dir}: no such model directory")
    if context is not None and context < 2:
        raise UserError(f"--context must be at least 2 tokens, got {context}")
    tokenizer = Tokenizer.from_dir(model_dir)
    return open_backend(model_dir, kind, context), tokenizer


__all__ = ["BACKENDS", "Backend", "open_backend", "open_model"]
