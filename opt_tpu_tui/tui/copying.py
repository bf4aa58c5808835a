"""Copy and export from the chat: f5 (the last reply), f8 (its last code block), f9 (the
conversation as Markdown), and c/m in the messages screen.

Copying goes two ways at once, OSC 52 through Textual and the same text in a file
(export.clipboard_file), because many terminals ignore OSC 52. The controller says what
there is to take (chat_controller.py); this module only tells the user what happened.
"""

from __future__ import annotations

from textual.app import App

from opt_tpu_tui.chat_controller import BUSY, ChatController
from opt_tpu_tui.errors import UserError
from opt_tpu_tui.export import clipboard_file, last_code_block, write_text


def copy_text(app: App[object], text: str, what: str) -> None:
    """Copy ``text`` (``what`` names it in the notification) by OSC 52 and into the clipboard file."""
    app.copy_to_clipboard(text)
    try:
        path = write_text(clipboard_file(), text)
    except UserError as error:
        app.notify(f"Copied {what} by OSC 52 only: {error}", severity="warning", timeout=8)
        return
    app.notify(f"Copied {what} (if your terminal takes OSC 52), and into {path}", timeout=6)


def copy_last_reply(app: App[object], chat: ChatController, *, code: bool = False) -> None:
    """Copy the last reply, or with ``code`` its last fenced code block; the user is told why when there is none."""
    try:
        text = chat.last_reply()
    except UserError as error:
        app.notify(str(error), severity="warning")
        return
    if not code:
        copy_text(app, text, "the last reply")
        return
    block = last_code_block(text)
    if block is None:
        app.notify("The last reply has no code block", severity="warning")
    else:
        copy_text(app, block, "the code block")


def export_chat(app: App[object], chat: ChatController) -> None:
    """Write the conversation as Markdown and show the file's path (not while a reply streams)."""
    if chat.streaming is not None or not chat.conversation.turns:
        app.notify(BUSY if chat.streaming is not None else "There is nothing to export yet", severity="warning")
        return
    try:
        app.notify(f"Exported to {chat.export()}", timeout=8)
    except UserError as error:
        app.notify(str(error), title="Not exported", severity="error", timeout=8)
