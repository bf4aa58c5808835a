"""The Textual chat UI. ``run`` is what ``opt-tpu-tui`` calls with neither -p nor -c."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path

from opt_tpu_tui import box, paths
from opt_tpu_tui.backends import Backend, open_model
from opt_tpu_tui.config import Settings
from opt_tpu_tui.devices import DeviceMonitor
from opt_tpu_tui.errors import UserError
from opt_tpu_tui.native_output import native_stdout_to
from opt_tpu_tui.overrides import Overrides
from opt_tpu_tui.tokenizer import Tokenizer


def model_loader(
    model_dir: Path, backend: str, context: int | None, device: int = 0
) -> Callable[[], tuple[Backend, Tokenizer]]:
    """A loader for the app's load worker, which calls it off the UI thread."""
    return lambda: open_model(model_dir, backend, context, device)


OTHER_MODES = "opt-tpu-tui -p TEXT replies once and -c chats line by line, both without a full-screen terminal"
# The UI keeps about a dozen files open (the terminal, the history and its side files, the event
# loop's), more while a model loads; the floor leaves room for that. Any system's default is far above.
MIN_OPEN_FILES = 32


def check_terminal(environ: Mapping[str, str] = os.environ) -> None:
    """Refuse, in one line naming -p and -c, where the full-screen UI cannot work.

    Textual reads keys from stdin and draws on stderr (stdout carries what C libraries
    print, native_output.py). On a stdin at its end (``< /dev/null``) its input loop spun
    a core forever; with the streams redirected it wrote escape codes into the files and
    hung; and a ``TERM=dumb`` terminal (an editor's shell buffer) cannot show it at all.
    """
    for name, stream in (("stdin", sys.__stdin__), ("stdout", sys.__stdout__), ("stderr", sys.__stderr__)):
        if not _is_terminal(stream):
            raise UserError(f"the terminal UI needs a terminal, and {name} is not one: {OTHER_MODES}")
    if environ.get("TERM") == "dumb":
        raise UserError(f"the terminal UI cannot draw on TERM=dumb: {OTHER_MODES}")


def _is_terminal(stream: object) -> bool:
    try:
        return stream is not None and stream.isatty()  # type: ignore[attr-defined]
    except (AttributeError, ValueError, OSError):  # closed (``<&-``) or replaced
        return False


def check_open_files() -> None:
    """Refuse, in one line, a limit of open files the UI cannot start with (``ulimit -n 9``).

    Below it, starting failed wherever the next file was opened, in a traceback: the
    event loop's socket pair, a module Textual imports late, the history. A soft limit
    below the floor is raised to it when the hard limit allows (any process may).
    """
    if not box.raise_open_file_limit(MIN_OPEN_FILES):
        raise UserError(
            f"the terminal UI needs at least {MIN_OPEN_FILES} open files, and this shell allows "
            f"{box.open_file_limit()[1]} (ulimit -n): raise it, e.g. ulimit -n 1024"
        )


def server_loader(url: str, setting: Path | None = None) -> Callable[[], object]:
    """A loader that connects to a running ``opt-tpu-tui serve`` (serve/client.py's RemoteEngine), off the UI thread;
    ``setting``: the settings file the address is from (None: ``--server``), which its errors name."""

    def connect() -> object:
        from opt_tpu_tui.serve.client import Origin, RemoteEngine, Unreachable

        try:
            return RemoteEngine.connect(url, Origin(setting))
        except Unreachable as error:  # the UI's words: it tries again when the user sends (chat_pane.reconnect)
            raise UserError(f"Cannot connect to the server at {url}: {error.reason} (is opt-tpu-tui serve running there?)") from None

    return connect


def run(
    model_dir: Path, backend: str, context: int | None, demo: bool, settings: Settings, warnings: list[str],
    session: Overrides | None = None, server: str | None = None, device: int = 0, server_setting: Path | None = None,
) -> int:
    """Start the app on ``model_dir``; returns the process exit code.

    The command line has already resolved the model (``--model``, the last model
    used, or the demo) and read the settings; ``warnings`` are shown on start, ``session`` holds the
    values given on the command line for this run (sampling flags, ``--preamble``). The
    model is remembered as the last one used once it loads, unless it is the demo. With
    ``server`` the model is that running server's, and none is loaded here. ``device`` is
    the TPU the model is loaded on and the stats pane reads (``--device``). ``server_setting`` is the settings
    file the server's address is from (None: ``--server``), which the errors name.
    """
    check_terminal()
    check_open_files()
    from opt_tpu_tui.history import HistoryStore
    from opt_tpu_tui.tui.app import OptTuiApp

    store, history_warning = HistoryStore.open()

    def remember(_: object) -> None:
        if not demo:
            app.update_settings(last_model=str(model_dir.resolve()))  # not the backend: --backend is per run

    app = OptTuiApp(
        settings=settings,
        store=store,
        loader=server_loader(server, server_setting) if server else model_loader(model_dir, backend, context, device),  # type: ignore[arg-type]
        model_label=server if server else model_dir.name,
        backend_label="server" if server else backend,
        demo=demo and not server,
        warnings=[*warnings, *([history_warning] if history_warning else [])],
        on_model_ready=None if server else remember,
        session=session,
        monitor_factory=partial(DeviceMonitor, device_id=device),
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


__all__ = ["run", "model_loader", "check_terminal", "check_open_files"]
