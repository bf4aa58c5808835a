"""The transcript: user messages as plain text, assistant replies as (streamed) Markdown."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.widgets import Markdown, Static
from textual.widgets._markdown import MarkdownStream


class Transcript(VerticalScroll):
    """The scrolling list of messages (``layout: stream`` in the screen's CSS keeps layout cheap)."""

    can_focus = True


class UserMessage(Static):
    def __init__(self, text: str) -> None:
        super().__init__(text, markup=False, classes="message user-message")
        self.border_title = "you"


class AssistantMessage(Vertical):
    """One reply; while it streams, text arrives through a MarkdownStream (flat cost per write)."""

    def __init__(self, text: str = "", *, label: str = "opt", stopped: bool = False, error: str | None = None) -> None:
        super().__init__(classes="message assistant-message")
        self._initial = text
        self.border_title = label
        self.stopped = stopped
        self.error = error

    def compose(self) -> ComposeResult:
        yield Markdown(self._initial, classes="reply")
        yield Static("", classes="reply-status", markup=False)

    def on_mount(self) -> None:
        self._show_status()

    @property
    def markdown(self) -> Markdown:
        return self.query_one(Markdown)

    def start_stream(self) -> MarkdownStream:
        self.add_class("-streaming")
        return Markdown.get_stream(self.markdown)

    async def finish(self, text: str, *, stopped: bool, error: str | None) -> None:
        """Replace the streamed text with one clean parse of the final reply and show how it ended."""
        self.remove_class("-streaming")
        self.stopped, self.error = stopped, error
        await self.markdown.update(text)
        self._show_status()

    def _show_status(self) -> None:
        status = self.query_one(".reply-status", Static)
        if self.error:
            status.update(f"⚠ {self.error}")
        elif self.stopped:
            status.update("■ stopped")
        status.display = bool(self.error or self.stopped)
        self.set_class(self.stopped, "-stopped")
        self.set_class(bool(self.error), "-error")


class Notice(Static):
    """A line of information in the transcript (model loading, errors, demo notice)."""

    def __init__(self, text: str, kind: str = "info") -> None:
        super().__init__(text, markup=False, classes=f"notice -{kind}")
