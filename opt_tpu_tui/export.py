"""Conversations out of the app: as Markdown files, and text for the clipboard.

One place for both the TUI's keys and ``opt-tpu-tui export``. The Markdown is written
for people (a heading per conversation, the speaker before each message); model text
goes in as it was generated, since a file is not a terminal. Files land in the data
directory unless the user names one, private (0600) and written atomically, like every
user file.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

from opt_tpu_tui import paths
from opt_tpu_tui.atomic import atomic_write
from opt_tpu_tui.chat import Turn
from opt_tpu_tui.errors import UserError

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
        sys.stdout.write(text)
        return 0
    path = write_text(Path(args.output) if args.output else export_path(summary.id), text)
    print(path)
    return 0
