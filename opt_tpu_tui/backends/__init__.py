"""Inference backends behind one protocol; ``open_backend`` picks and builds one."""

from __future__ import annotations

from pathlib import Path

from opt_tpu_tui.backends.base import Backend
from opt_tpu_tui.errors import UserError

BACKENDS = ("auto", "cpu", "bmrt", "sail")


def open_backend(model_dir: Path, kind: str = "auto", context: int | None = None) -> Backend:
    """Build the backend ``kind`` for ``model_dir``; "auto" picks what the directory holds."""
    if kind not in BACKENDS:
        raise UserError(f"unknown backend {kind!r}: choose one of {', '.join(BACKENDS)}")
    if kind in ("auto", "cpu"):
        from opt_tpu_tui.backends.cpu import CPUBackend

        return CPUBackend(Path(model_dir), context)
    raise UserError(f"backend {kind!r} is not available yet")


__all__ = ["BACKENDS", "Backend", "open_backend"]
