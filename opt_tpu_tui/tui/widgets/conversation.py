"""The transcript: user messages as plain text, replies streamed row by row, then as Markdown.

What a streamed reply costs on the wire is what Textual repaints, so a streaming reply
is written into screen rows that already exist and only the row being written changes
with each batch of tokens (ReplyView says why and how). A token then costs about the
same at the 2,000th as at the 20th, on the wire and in layout. When the reply ends it
becomes a single Markdown widget, rendered once.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Iterator

from rich.cells import cell_len
from rich.console import Group, RenderableType
from rich.markdown import Markdown as RichMarkdown
from rich.style import Style
from rich.text import Text
from textual.containers import VerticalScroll
from textual.geometry import Region
from textual.widget import Widget
from textual.widgets import Static

from opt_tpu_tui.safe_text import terminal_safe


def markdown(text: str) -> RichMarkdown:
    """Model text as Markdown, with its control characters made visible."""
    return RichMarkdown(terminal_safe(text))


def take_line(text: str, width: int) -> tuple[str, str] | None:
    """The first line of ``text`` word-wrapped at ``width`` cells, and the rest.

    None while that first line could still change: it ends in no newline and fits. Greedy
    wrapping only ever moves the last word, so a line taken here is final.
    """
    newline = text.find("\n")
    head = text if newline < 0 else text[:newline]
    if cell_len(head) <= width:
        return None if newline < 0 else (head, text[newline + 1 :])
    fits = 0
    while cell_len(head[: fits + 1]) <= width:
        fits += 1
    space = head.rfind(" ", 0, fits + 1)
    if space > 0:
        return head[:space], text[space + 1 :]
    return head[: max(1, fits)], text[max(1, fits) :]


def row_of(widget: Widget, text: str) -> int:
    """The row of ``widget``, border included, where ``text`` first shows, case and line breaks aside (0 if it does not).

    Read from the rows the widget draws, so a match deep in a tall reply can be scrolled
    to, not just the reply's top. Markdown may hide the text (inside a link's target,
    say); the top serves then.
    """
    words = text.split()
    if not words:
        return 0
    starts, flat = [], ""
    for strip in widget.render_lines(Region(0, 0, *widget.outer_size)):
        starts.append(len(flat))
        flat += strip.text + "\n"
    found = re.search(r"\s+".join(map(re.escape, words)), flat, re.IGNORECASE)
    return bisect_right(starts, found.start()) - 1 if found else 0


class Line(Static):
    """One screen row of a streaming reply: empty room until text is written into it."""

    def __init__(self) -> None:
        super().__init__(" ", classes="reply-part reply-line")
        self.text = ""

    def write(self, text: str) -> None:
        if text != self.text:
            self.text = text
            # " ": an empty row keeps its height. No layout: the row's size never changes, and a
            # layout of the whole screen on every batch of tokens was most of the UI's work
            self.update(Text(text or " ", no_wrap=True), layout=False)


class ReplyView(Static):
    """One reply. While it streams the caller only calls :meth:`append`, then :meth:`finish` once.

    Textual repaints a container whole when it grows, and every sibling before a widget
    that is mounted (their stacking order changes). So a streaming reply is written into
    rows that already exist: empty Line widgets for two thirds of the view, mounted after
    this one. Each batch of tokens rewrites the row being written and nothing else; when the
    rows run out, their text becomes one block mounted before them and they are emptied, in
    one frame (the anchored transcript scrolls to them in the same layout). That is one
    full repaint per two thirds of a screen of text (which reaches the terminal as a
    scroll of its own and the new rows: tui/terminal_copy.py), and the cost per token does
    not grow with the reply. When the reply ends it is rendered once, as Markdown with how it ended,
    by this one widget (one widget a reply keeps each layout of a long chat cheap).
    """

    def __init__(
        self, text: str = "", *, label: str = "opt", stopped: bool = False, error: str | None = None,
        streaming: bool = False, variant: tuple[int, int] | None = None,
    ) -> None:  # fmt: skip
        super().__init__(Group(), classes="message assistant-message")  # no rows while it streams
        self.border_title = terminal_safe(label)
        self.text = text  # the reply as generated (the control characters only change on screen)
        self.stopped = stopped
        self.error = error
        self.streaming = streaming
        self.variant = variant  # (shown, of how many) when its message has alternatives (ctrl+g flips them)
        self._taken = 0  # how much of self.text is in finished rows
        self._blocks: list[Static] = []  # finished rows, merged
        self._rows: list[Line] = []  # the rows being filled: finished ones, then the one being written, then room
        self._filled = 0  # how many of self._rows are finished
        self._wrapped_at = 0  # the width the rows were wrapped at
        self._rewrap = False

    def on_mount(self) -> None:
        self._show()

    @property
    def parts(self) -> list[Static]:
        """The widgets showing a streaming reply, in order (siblings after this one)."""
        return [*self._blocks, *self._rows]

    async def append(self, text: str) -> None:
        """Add streamed text: finished rows are set down, the row being written repaints."""
        self.text += text
        width = self._width()
        if not self._rows or self._rewrap or width != self._wrapped_at:
            await self._lay_out(width)
            return
        for line in self._take_lines(width):
            self._rows[self._filled].write(line)
            self._filled += 1
            if self._filled == len(self._rows):
                await self._new_rows()
        self._rows[self._filled].write(terminal_safe(self.text[self._taken :]))

    def _take_lines(self, width: int) -> Iterator[str]:
        """The finished lines of the text not yet taken, wrapped at ``width``, made safe; advances the take."""
        while (taken := take_line(self.text[self._taken :], width)) is not None:
            self._taken = len(self.text) - len(taken[1])
            yield terminal_safe(taken[0])

    @property
    def _transcript(self) -> Widget:
        assert isinstance(self.parent, Widget), "a reply streams inside the transcript"
        return self.parent

    def _width(self) -> int:
        """The text width of a row: the transcript's, less a row's left bar and padding."""
        return max(1, self._transcript.content_region.width - 3)

    async def _new_rows(self) -> None:
        """The rows are full: their text becomes a block mounted before them, and they are emptied, in one frame.

        The same rows serve again: the block is the one widget mounted (fresh rows were a
        third of the screen's widgets to mount, style and remove each time).
        """
        with self.app.batch_update():
            block = self._block([row.text for row in self._rows])
            await self._transcript.mount(block, before=self._rows[0])
            for row in self._rows:
                row.write("")
            self._blocks.append(block)
            self._filled = 0

    def _block(self, lines: list[str]) -> Static:
        return Static(Text("\n".join(lines), no_wrap=True), classes="reply-part reply-block")

    async def _room(self, after: Widget) -> list[Line]:
        rows = [Line() for _ in range(max(1, self._transcript.size.height * 2 // 3))]  # two thirds of the view
        await self._mount_parts(rows, after=after)
        return rows

    async def _lay_out(self, width: int) -> None:
        """Wrap the whole reply at ``width`` into one block and fresh rows (at the start, and after a resize)."""
        with self.app.batch_update():
            await self._remove_parts(self.parts)
            self._blocks, self._rows, self._filled, self._taken = [], [], 0, 0
            lines = list(self._take_lines(width))
            after: Widget = self
            if lines:
                self._blocks = [self._block(lines)]
                await self._mount_parts(self._blocks, after=self)
                after = self._blocks[0]
            self._rows = await self._room(after=after)
            self._rows[0].write(terminal_safe(self.text[self._taken :]))
            self._wrapped_at, self._rewrap = width, False

    async def _mount_parts(self, parts: list[Static] | list[Line], after: Widget) -> None:
        await self._transcript.mount_all(parts, after=after)

    async def _remove_parts(self, parts: list[Static] | list[Line]) -> None:
        if parts:
            await self._transcript.remove_children(parts)

    def on_resize(self) -> None:
        """Rows wrapped at the old width are wrapped again at the new one, by the next append.

        (Not here: append runs in the screen's task, and two tasks changing the
        widgets at once would interleave at every await.)
        """
        if self.streaming and self._rows and self._width() != self._wrapped_at:
            self._rewrap = True

    async def finish(self, text: str, *, stopped: bool, error: str | None) -> None:
        """The reply has ended: show it as one Markdown widget and how it ended."""
        self.text, self.stopped, self.error, self.streaming = text, stopped, error, False
        await self._remove_parts(self.parts)
        self._blocks, self._rows = [], []
        self._show()

    def show_variant(self, variant: tuple[int, int] | None) -> None:
        if variant != self.variant:
            self.variant = variant
            self._show()

    async def remove_with_parts(self) -> None:
        await self._remove_parts(self.parts)
        await self.remove()

    @property
    def status(self) -> str:
        """How the reply ended, when that is not the usual way ("" then)."""
        if self.error:
            return f"⚠ {terminal_safe(self.error)}"
        return "■ stopped" if self.stopped else ""

    def _show(self) -> None:
        """The finished reply as Markdown, then its status in the colour of its left bar."""
        self.set_class(self.stopped, "-stopped")
        self.set_class(bool(self.error), "-error")
        if self.streaming:
            return  # the text is in the parts after this widget
        body: list[RenderableType] = [markdown(self.text)]
        if self.status:
            colour = self.app.get_css_variables()["error" if self.error else "warning"]
            body.append(Text(self.status, style=Style(color=colour, italic=True)))
        if self.variant:
            body.append(Text(f"‹{self.variant[0]}/{self.variant[1]}› variants: ctrl+g, ←/→", style=Style(dim=True)))
        self.update(Group(*body))


class UserMessage(Static):
    def __init__(self, text: str) -> None:
        super().__init__(terminal_safe(text), markup=False, classes="message user-message")
        self.border_title = "you"


class Notice(Static):
    """A line of information in the transcript (model loading, errors, demo notice)."""

    def __init__(self, text: str, kind: str = "info") -> None:
        super().__init__(terminal_safe(text), markup=False, classes=f"notice -{kind}")


class Transcript(VerticalScroll):
    """The scrolling list of messages, anchored at the end (a streaming reply: see ReplyView).

    Only the last ``MOUNTED`` messages are kept as widgets; the older ones are counted
    in a line at the top (they stay in the history), so a long chat costs as much per
    turn as a short one. A conversation opened at an older search match shows a window
    of its turns instead, and counts the later ones in a line at the bottom.
    """

    MOUNTED = 40
    can_focus = True

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.hidden_messages = 0
        self.later_messages = 0  # after the window shown (opened at a search match); 0 when the end is shown
        self._hidden_count: Static | None = None  # the line counting them (a query would walk every message)
        self._context_start: Notice | None = None  # the line above the oldest turn still in the prompt

    async def add(self, *messages: Static | ReplyView) -> None:
        """Mount messages at the end, dropping the oldest past MOUNTED."""
        await self.mount_all(messages)
        mounted = [child for child in self.children if isinstance(child, (UserMessage, ReplyView))]
        excess = len(mounted) - self.MOUNTED
        if excess > 0:
            drop = mounted[: excess + self.MOUNTED // 4]  # in batches: the layout shifts once every few turns
            self.hidden_messages += len(drop)
            await self.remove_children(drop)
        if self.hidden_messages and (excess > 0 or self._hidden_count is None):
            await self._show_hidden_count()

    async def _show_hidden_count(self) -> None:
        text = f"▲ {self.hidden_messages} earlier messages are in the history but not shown here"
        if self._hidden_count is not None:
            self._hidden_count.update(text)
        else:
            self._hidden_count = Static(text, classes="notice hidden-count", markup=False)
            await self.mount(self._hidden_count, before=0)

    async def show_later(self, count: int) -> None:
        """Say, at the bottom, that ``count`` later messages are not shown (the chat goes on from the end)."""
        self.later_messages = count
        if count:
            text = f"▼ {count} later messages are in the history: sending a message shows the latest again"
            await self.mount(Static(text, classes="notice later-count", markup=False))

    async def mark_context_start(self, kept_turns: int) -> None:
        """Show where the model's context now starts: above the first of the last ``kept_turns`` turns.

        The marker moves as more turns drop; none when nothing has dropped or when the
        boundary is among the messages not mounted (the line at the top counts those).
        """
        if self._context_start is not None:
            await self._context_start.remove()
            self._context_start = None
        users = [child for child in self.children if isinstance(child, UserMessage)]
        if 0 < kept_turns < len(users) or (kept_turns == len(users) and self.hidden_messages):
            self._context_start = Notice("▼ the model no longer sees the turns above: they left its context", "warning")
            self._context_start.add_class("context-start")
            await self.mount(self._context_start, before=users[-kept_turns])

    async def clear(self) -> None:
        self.hidden_messages, self.later_messages, self._hidden_count, self._context_start = 0, 0, None, None
        await self.remove_children()
