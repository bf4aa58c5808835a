"""The transcript: user messages as plain text, assistant replies as (streamed) Markdown."""

from __future__ import annotations

from rich.markdown import Markdown as RichMarkdown
from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.widgets import Markdown, Static


class Transcript(VerticalScroll):
    """The scrolling list of messages (``layout: stream`` in the screen's CSS keeps layout cheap)."""

    can_focus = True


class UserMessage(Static):
    def __init__(self, text: str) -> None:
        super().__init__(text, markup=False, classes="message user-message")
        self.border_title = "you"


SEGMENT_CHARS = 1200  # a streamed reply moves on to a new Markdown widget past this size


def split_point(text: str, start: int) -> int | None:
    """Where ``text`` may be cut into two Markdown documents: just after the last blank line at or
    past ``start`` with no code fence left open before it; None if there is no such place."""
    cut = text.rfind("\n\n", start)
    if cut < 0:
        return None
    head = text[: cut + 2]
    fences = sum(1 for line in head.splitlines() if line.lstrip().startswith(("```", "~~~")))
    return cut + 2 if fences % 2 == 0 else None


class ReplyStream:
    """Feeds a streamed reply into a chain of Markdown widgets, each at most about SEGMENT_CHARS.

    A single Markdown widget gets dearer to append to and lay out as it grows; cutting
    the reply at paragraph boundaries keeps each append's cost flat, and the
    transcript's ``layout: stream`` caches the placement of finished segments.
    """

    def __init__(self, message: AssistantMessage) -> None:
        self.message = message
        self.text = ""  # everything written so far
        self.segment_start = 0  # where the last Markdown widget's text begins
        self._stream = Markdown.get_stream(message.markdown)

    async def write(self, text: str) -> None:
        self.text += text
        cut = None
        if len(self.text) - self.segment_start > SEGMENT_CHARS:
            cut = split_point(self.text, self.segment_start + SEGMENT_CHARS // 2)
        if cut is None or cut <= len(self.text) - len(text):
            await self._stream.write(text)
            return
        before = len(self.text) - len(text)
        await self._stream.write(self.text[before:cut])
        await self._stream.stop()
        await self.message.freeze_last(self.text[self.segment_start : cut])
        self.segment_start = cut
        segment = Markdown(self.text[cut:], classes="reply")
        await self.message.mount(segment, before=self.message.query_one(".reply-status"))
        self._stream = Markdown.get_stream(segment)

    async def stop(self) -> None:
        await self._stream.stop()


class AssistantMessage(Vertical):
    """One reply; while it streams, text arrives through ReplyStream (flat cost per write)."""

    def __init__(
        self, text: str = "", *, label: str = "opt", stopped: bool = False, error: str | None = None,
        frozen: bool = False,
    ) -> None:  # fmt: skip
        super().__init__(classes="message assistant-message")
        self._initial = text
        self.border_title = label
        self.stopped = stopped
        self.error = error
        self._frozen: list[str] = [text] if frozen and text else []

    def compose(self) -> ComposeResult:
        if self._frozen:  # from the history: one widget, several times cheaper to mount and lay out
            yield Static(RichMarkdown(self._initial), classes="reply-frozen")
        else:  # a reply that may still grow: a Markdown widget, which streams
            yield Markdown(self._initial, classes="reply")
        yield Static("", classes="reply-status", markup=False)

    def on_mount(self) -> None:
        self._show_status()

    @property
    def markdown(self) -> Markdown:
        """The Markdown widget that holds (the end of) the reply."""
        return self.query(Markdown).last()

    @property
    def text(self) -> str:
        """The reply as shown: its frozen segments and the Markdown widget joined."""
        live = self.query(Markdown)
        return "".join(self._frozen) + (live.last().source if live else "")

    async def freeze_last(self, source: str) -> None:
        """Swap the finished Markdown segment for one Static showing the same Markdown.

        A Markdown widget is a tree of block widgets, and every layout pass visits them
        all; a frozen segment is a single widget, so a long reply's cost stays flat.
        """
        old = self.markdown
        frozen = Static(RichMarkdown(source), classes="reply-frozen")
        self._frozen.append(source)
        await self.mount(frozen, before=old)
        await old.remove()

    def start_stream(self) -> ReplyStream:
        self.add_class("-streaming")
        self._reply_stream = ReplyStream(self)
        return self._reply_stream

    async def finish(self, text: str, *, stopped: bool, error: str | None) -> None:
        """Give the last segment one clean parse of the final text and show how the reply ended."""
        self.remove_class("-streaming")
        self.stopped, self.error = stopped, error
        stream = getattr(self, "_reply_stream", None)
        start = stream.segment_start if stream is not None and text.startswith(stream.text[: stream.segment_start]) else 0
        if start == 0:
            await self.query(".reply-frozen").remove()
            self._frozen.clear()
        await self.markdown.update(text[start:])
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
