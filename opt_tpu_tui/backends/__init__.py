"""Inference backends behind one protocol; ``open_backend`` picks and builds one."""

from __future__ import annotations

import argparse

from pathlib import Path

from opt_tpu_tui import converted, original_layout
from opt_tpu_tui.backends.base import Backend
from opt_tpu_tui.errors import UserError
from opt_tpu_tui.tokenizer import Tokenizer

BACKENDS = ("auto", "cpu", "bmrt", "sail")


def pick_backend(model_dir: Path) -> str:
    """What "auto" means for ``model_dir``: a bmodel (converted, or OPT-TPU's) runs on sail, else bmrt on a box; a checkpoint on the cpu.

    The simulator is never picked by itself: it checks correctness at seconds per token.
    """
    if not converted.is_converted(model_dir) and not original_layout.is_original(model_dir):
        return "cpu"
    from opt_tpu_tui.backends.bmrt_lib import on_device
    from opt_tpu_tui.backends.sail import sail_available

    if sail_available():
        return "sail"
    if on_device():
        return "bmrt"
    raise UserError(
        f"{model_dir} holds a BM1684X bmodel, but neither sophon-sail nor libsophon is installed here; "
        "`--backend bmrt` runs it in the simulator (slowly), or point --model at a Hugging Face checkpoint"
    )


DEVICE_HELP = "the TPU to use on a host with several, for bmrt and sail and the device stats (default: 0)"


def device_index(text: str) -> int:
    """``--device N``: a TPU's index, 0 or more (argparse's type)."""
    try:
        index = int(text)
    except ValueError:
        index = -1
    if index < 0:
        raise argparse.ArgumentTypeError(f"expected a device index, 0 or more, got {text!r}")
    return index


def open_backend(model_dir: Path, kind: str = "auto", context: int | None = None, device: int = 0) -> Backend:
    """Build the backend ``kind`` for ``model_dir``; "auto" picks by what the directory holds (``pick_backend``).

    ``device`` is the TPU's index on a host with several (``--device``); the CPU has none.
    """
    if kind not in BACKENDS:
        raise UserError(f"unknown backend {kind!r}: choose one of {', '.join(BACKENDS)}")
    model_dir = Path(model_dir)
    if kind == "auto":
        kind = pick_backend(model_dir)
    if kind == "bmrt":
        from opt_tpu_tui.backends.bmrt import open_bmrt

        return open_bmrt(model_dir, context, device)
    if kind == "sail":
        from opt_tpu_tui.backends.sail import open_sail

        return open_sail(model_dir, context, device)
    if converted.is_converted(model_dir):
        raise UserError(f"{model_dir} is converted for the TPU; the cpu backend needs the Hugging Face checkpoint")
    from opt_tpu_tui.backends.cpu import CPUBackend

    return CPUBackend(model_dir, context)


def check_model_dir(model_dir: Path) -> None:
    """A UserError unless ``model_dir`` is a folder; a file in one (``DIR/x.bmodel``) is told to pass the folder.

    Checked before anything resolves the path: ``is_dir`` is False for a symbolic link
    loop, where ``resolve`` raises RuntimeError (Python < 3.13).
    """
    if model_dir.is_file():
        raise UserError(
            f"{model_dir}: a file, but --model takes the model's folder (the bmodel or checkpoint with its "
            f"tokenizer files): --model {model_dir.parent}"
        )
    if not model_dir.is_dir():
        raise UserError(f"{model_dir}: no such model directory")


def open_model(
    model_dir: Path, kind: str = "auto", context: int | None = None, device: int = 0
) -> tuple[Backend, Tokenizer]:
    """The tokenizer and a backend for ``model_dir``: what every front end needs to chat.

    The tokenizer is read first, as it is cheap and its absence is the commonest mistake.
    """
    model_dir = Path(model_dir)
    check_model_dir(model_dir)
    if context is not None and context < 2:
        raise UserError(f"--context {context} is out of range: a model allows 2 tokens at least")
    tokenizer = Tokenizer.from_dir(model_dir)
    try:
        backend = open_backend(model_dir, kind, context, device)
    except UserError as error:
        from opt_tpu_tui.serve.registry import held_by_server

        raise held_by_server(error, kind) from None
    if tokenizer.max_id >= backend.vocab_size:
        backend.close()
        raise UserError(
            f"{tokenizer.source}: holds token id {tokenizer.max_id}, but the model has logits for ids "
            f"0 to {backend.vocab_size - 1} (vocab_size): the vocabulary belongs to another model"
        )
    return backend, tokenizer


__all__ = ["BACKENDS", "Backend", "open_backend", "open_model"]
