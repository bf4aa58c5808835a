"""The real app over a scripted backend, as a program: a reply of a known text at a known pace, in a real terminal.

For the tmux tests and bench/ui_bytes.py, which need a reply that streams as a real
model's does on a box (a few hundred tokens a second at most), far longer than the
screen, without a model to run. Settings and history go where XDG_CONFIG_HOME and
XDG_DATA_HOME say.

    python tests/scripted_app.py [--tokens 2000] [--rate 200] [--progress FD] [--textual-writes]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script: the test helpers beside it

from scripted import ScriptedBackend  # noqa: E402
from tiny import train_tokenizer  # noqa: E402
from tui_support import FixedMonitor, script_ids  # noqa: E402

from opt_tpu_tui.config import Settings  # noqa: E402
from opt_tpu_tui.history import HistoryStore  # noqa: E402
from opt_tpu_tui.sampling import SamplingSettings  # noqa: E402
from opt_tpu_tui.tokenizer import Tokenizer  # noqa: E402
from textual.app import App  # noqa: E402

from opt_tpu_tui.tui.app import OptTuiApp  # noqa: E402

TEXT = (
    "The quick brown fox (狐) jumps over the lazy dog. Hello world, this is a small test of the tokenizer "
    "and the model.\n\n"
)


class Reporting(ScriptedBackend):
    """Writes "<token number> <monotonic time>" to ``progress`` as each token is produced (if given)."""

    progress: Optional[IO[str]] = None  # evaluated at class creation: no `|` on 3.8

    def prefill(self, ids: list[int]):  # type: ignore[no-untyped-def]
        logits = super().prefill(ids)
        self._report()
        return logits

    def decode(self, token: int):  # type: ignore[no-untyped-def]
        logits = super().decode(token)
        self._report()
        return logits

    def _report(self) -> None:
        if self.progress is not None:
            self.progress.write(f"{self._step} {time.monotonic()}\n")


class TextualWritesApp(OptTuiApp):
    """The app writing each update as Textual makes it, not through its terminal copy (bench/ui_bytes.py's reference)."""

    _display = App._display


def run(tokens: int, rate: float, progress_fd: int | None = None, textual_writes: bool = False) -> int:
    """Run the app; its reply to any message is ``tokens`` tokens of TEXT, over and over, at ``rate`` per second, then EOS.

    Returns the app's exit code; the history is closed after the app, as ``opt_tpu_tui.tui.run`` does."""
    tokenizer = Tokenizer.from_dir(train_tokenizer(Path(tempfile.mkdtemp()) / "tok"))
    script: list[int] = []
    while len(script) < tokens:
        script += script_ids(tokenizer, TEXT, eos=False)
    script = script[:tokens] + [tokenizer.eos_id]
    backend = Reporting(script, tokenizer.vocab_size, context_length=4096, delay=1.0 / rate)
    backend.model_name = "scripted-opt"
    if progress_fd is not None:
        backend.progress = os.fdopen(progress_fd, "w", buffering=1)
    sampling = SamplingSettings(max_new_tokens=tokens + 10, temperature=0.0, repetition_penalty=1.0)
    store, _ = HistoryStore.open()
    app = (TextualWritesApp if textual_writes else OptTuiApp)(
        settings=Settings(sampling=sampling, side_pane="hidden"),
        store=store,
        loader=lambda: (backend, tokenizer),  # type: ignore[arg-type,return-value]
        model_label="scripted-opt",
        backend_label="scripted",
        monitor_factory=FixedMonitor,
    )
    try:
        app.run()
    finally:
        store.close()
    return app.return_code or 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=200.0, help="tokens per second")
    parser.add_argument("--progress", type=int, help="a file descriptor to report each token on")
    parser.add_argument("--textual-writes", action="store_true", help="write updates as Textual makes them")
    args = parser.parse_args()
    sys.exit(run(args.tokens, args.rate, args.progress, args.textual_writes))
