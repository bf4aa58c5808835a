"""Conversations out of the app: as Markdown files, and text for the clipboard.

One place for both the TUI's keys and ``opt-tpu-tui export``. The Markdown is written
for people (a heading per conversation, the speaker before each message); model text
goes in as it was generated, since a file is not a terminal (``-o -`` to a terminal is
the exception: there the model's control characters are shown, not obeyed). Files land
in the data directory unless the user names one, private (0600) and written atomically,
like every user file; a file the user names is never replaced unasked (write_named_file).
"""

from __future__ import annotations

import argparse
import os
import re
import stat
import sys
import time
from pathlib import Path

from opt_tpu_tui import paths
from opt_tpu_tui.atomic import atomic_write
from opt_tpu_tui.chat import Turn
from opt_tpu_tui.errors import UserError
from opt_tpu_tui.native_output import to_devnull
from opt_tpu_tui.safe_text import terminal_safe

FENCE = re.compile(r"^(```|~~~)[^\n]*\n(.*?)^\1[ \t]*$", re.MULTILINE | re.DOTALL)


def conversation_markdown(title: str, turns: list[Turn], updated: float | None = None) -> str:
    """The conversation as a Markdown document."""
    lines = [f"# {title.strip() or 'Conversation'}", ""]
    if updated is not None:
        lines += [f"_Saved {time.strftime('%Y-%m-%d %H:%M', time.localtime(updated))} by opt-tpu-tui_", ""]
    for turn in turns:
        model = f"**Model ({' '.join(turn.model.split())}):**" if turn.model.strip() else "**Model:**"  # '': saved by an older version
        lines += ["**You:**", "", turn.user.strip(), "", model, "", turn.assistant.strip() or "_(no reply)_"]
        if turn.stopped:
            lines += ["", "_(stopped)_"]
        lines.append("")
    return "\n".join(lines)


def last_code_block(text: str) -> str | None:
    """The body of the last fenced code block in ``text`` (``` or ~~~), or None."""
    blocks = FENCE.findall(text)
    return blocks[-1][1] if blocks else None


def export_path(conversation_id: int | None) -> Path:
    """Where an export goes when no file is named: <data dir>/exports/conversation-<id>.md.

    (A conversation the history could not save has no id: it is named by the time.)
    """
    name = conversation_id if conversation_id is not None else time.strftime("unsaved-%Y%m%d-%H%M%S")
    return paths.private_dir(paths.data_dir() / "exports") / f"conversation-{name}.md"


def clipboard_file() -> Path:
    """The copy of the last text copied, for terminals that ignore OSC 52 (many do, some over SSH)."""
    return paths.private_dir(paths.data_dir()) / "clipboard.txt"


def write_text(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (0600); one clear line when that fails."""
    try:
        atomic_write(path, text)
    except OSError as error:
        raise UserError(f"could not write {path}: {error.strerror or error}") from None
    return path


def run_export(argv: list[str]) -> int:
    """``opt-tpu-tui export ID|--last [-o FILE]``: a saved conversation as Markdown."""
    from opt_tpu_tui.history import HistoryStore

    parser = argparse.ArgumentParser(
        prog="opt-tpu-tui export", description="Write a saved conversation as Markdown."
    )
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("id", nargs="?", type=int, help="the conversation's number (the conversation list shows it)")
    which.add_argument("--last", action="store_true", help="the conversation changed last")
    parser.add_argument("-o", "--output", metavar="FILE", help="where to write ('-' for stdout; default: "
                        "<data dir>/exports/conversation-ID.md)")  # fmt: skip
    parser.add_argument("-f", "--force", action="store_true", help="replace FILE if it exists (keeping its mode)")
    args = parser.parse_args(argv)
    store, warning = HistoryStore.open()
    try:
        if warning:
            print(f"opt-tpu-tui: warning: {warning}", file=sys.stderr)
        conversations = {c.id: c for c in store.list_conversations()}
        if args.last:
            if not conversations:
                raise UserError("there are no saved conversations")
            args.id = next(iter(conversations))  # newest first
        if args.id not in conversations:
            raise UserError(f"there is no conversation {args.id} (opt-tpu-tui export --last takes the newest)")
        summary = conversations[args.id]
        text = conversation_markdown(summary.title, store.load(summary.id), summary.updated)
    finally:
        store.close()
    if args.output == "-":
        write_stdout(text)
        return 0
    if args.output:
        write_named_file(Path(args.output), text, args.force)
        print(args.output)
    else:
        print(write_text(export_path(summary.id), text))
    return 0


def write_stdout(text: str) -> None:
    """``text`` on stdout: on a terminal with model text's control characters made visible, as every front
    end shows it (safe_text.py); to a pipe or a file as UTF-8, byte for byte what ``-o FILE`` would hold.

    A closed stdout or a failed write (a full disk) is one line; what was not written is dropped
    (stdout goes to /dev/null) so that the flush at exit does not fail a second time.
    """
    stream = sys.stdout
    if stream is None:
        raise UserError("stdout is closed, so there is nowhere to write the export (-o FILE writes a file)")
    try:
        binary = getattr(stream, "buffer", None)
        if stream.isatty() or binary is None:
            stream.write(terminal_safe(text) if stream.isatty() else text)
        else:
            stream.flush()
            binary.write(text.encode("utf-8"))
        stream.flush()
    except (OSError, ValueError) as error:  # ValueError: a stream whose descriptor was closed under it
        to_devnull(stream)
        raise UserError(f"stdout: cannot write the export ({getattr(error, 'strerror', None) or error})") from None


def write_named_file(path: Path, text: str, force: bool) -> None:
    """Write the file the user named with ``-o``, never replacing anything by surprise.

    - nothing there: a new file, private (0600) like every file the app writes;
    - a regular file: refused unless ``force``, which replaces it keeping its mode (the user's file,
      the user's permissions);
    - a symbolic link to a regular file: the same, and with ``force`` written through (the link
      stays, its target is replaced), after saying so on stderr;
    - anything else (a folder, a FIFO, a device such as /dev/null, a link to one or to nothing):
      refused, since replacing it by a file would not be what was asked.

    The write itself is atomic (atomic.py): a reader sees the old file or the new one.
    """
    try:
        link = path.is_symlink()
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        if path.is_symlink():
            raise UserError(f"{path}: a symbolic link to nothing; export writes only to a regular file") from None
        write_text(path, text)
        return
    except (OSError, RuntimeError) as error:  # RuntimeError: a symlink loop, on Python < 3.13
        raise UserError(f"{path}: cannot be written ({getattr(error, 'strerror', None) or error})") from None
    target = Path(os.path.realpath(path)) if link else path
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file"
        via = f" (a link to {target})" if link else ""
        raise UserError(f"{path}: {kind}{via}; export writes only to a regular file, or '-' for stdout")
    if not force:
        via = f" (a link to {target})" if link else ""
        raise UserError(f"{path}: exists{via}; --force replaces it, or name another file")
    if link:
        print(f"opt-tpu-tui: {path} is a symbolic link: writing its target, {target}", file=sys.stderr)
    try:
        atomic_write(target, text, mode=stat.S_IMODE(mode))
    except OSError as error:
        raise UserError(f"could not write {target}: {error.strerror or error}") from None
