"""The one place the app reaches into Textual's internals, and the versions that was written against.

Four parts of the app replace or read private Textual code; each imports the private
names it needs from here, so a Textual upgrade has one module to check:

- compositor.py ``DrawnCompositor``: the compositor's layout comparison and partial renders
  (``textual._compositor``: Compositor, CompositorMap, ReflowResult, ChopsUpdate);
- widgets/ordered_keys.py ``KeysInTurn``/``OrderedKeys``: a widget's key handler and the
  message queues' internals (``MessagePump._message_queue``, ``_queue``);
- driver.py: the xterm input parser (``textual._xterm_parser.XTermParser``,
  ``textual._parser.ParseError``) and LinuxDriver's input thread;
- terminal_copy.py ``CopiedTerminal``: the app's ``_display`` of compositor updates
  (``textual._compositor``: ChopsUpdate, LayoutUpdate).

They were written against Textual 8.2 (Python 3.9 and later) and 6.2 (what Python 3.8
gets, pyproject.toml). Another version may work or may not: ``version_warning`` says so
in one line at start-up (the app shows it with its other warnings), rather than failing
somewhere later.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from textual._compositor import ChopsUpdate, Compositor, CompositorMap, LayoutUpdate, ReflowResult
from textual._parser import ParseError
from textual._xterm_parser import XTermParser

if TYPE_CHECKING:
    from textual.app import App
    from textual.message_pump import MessagePump

WRITTEN_FOR = ("8.2", "6.2")  # Textual's major.minor versions the patches were written and tested against


def busy_pump(app: App[object]) -> MessagePump | None:
    """The app or a widget (on any screen) with a message queued or being handled, if any (ordered_keys.py).

    Textual keeps no count of that: it is read from each pump's queue (``_queue.Queue``,
    the same in Textual 6 and 8) and its task.
    """
    for pump in (app, *app._registry):
        queue = pump.__dict__.get("_message_queue")  # made on first use: a pump without one has had no message
        if queue is None or pump._closing or pump._closed:
            continue
        task = pump._task
        handling = task is not None and not task.done() and not queue.ready_event._waiters  # not waiting in get()
        if queue.qsize() or handling:
            return pump
    return None


def installed_version() -> str:
    """The Textual version installed ('' if its metadata cannot be read)."""
    try:
        from importlib.metadata import version
    except ImportError:  # pragma: no cover - 3.8 has importlib.metadata
        return ""
    try:
        return version("textual")
    except Exception:  # noqa: BLE001 - no metadata (a vendored copy): no version to check
        return ""


def version_warning(version: str | None = None) -> str | None:
    """One line when Textual's ``version`` (the installed one by default) is not one the patches were written for."""
    version = installed_version() if version is None else version
    if not version or ".".join(version.split(".")[:2]) in WRITTEN_FOR:
        return None
    known = " and ".join(f"{v}.x" for v in WRITTEN_FOR)
    return (
        f"Textual {version} is installed; the screen's drawing and key handling were written for Textual {known}, "
        "so something may look or behave wrong (pip install 'textual~=8.2.0', or 6.2 on Python 3.8)"
    )


__all__ = [
    "ChopsUpdate", "Compositor", "CompositorMap", "LayoutUpdate", "ParseError", "ReflowResult", "WRITTEN_FOR",
    "XTermParser", "busy_pump", "installed_version", "version_warning",
]  # fmt: skip
