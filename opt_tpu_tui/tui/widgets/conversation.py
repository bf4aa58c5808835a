"""The transcript: user messages and replies as the text they are, replies streamed row by row.

What a streamed reply costs on the wire and in the UI thread is what Textual repaints
and lays out, so a streaming reply is written into screen rows that already exist and
only the row being written changes with each batch of tokens (ReplyView says why and
how). A token then costs about the same at the 2,000th as at the 20th. When the reply
ends it becomes a single widget, rendered once. A reply is shown as the model wrote it,
every character: OPT is a base model and its text is text, so no Markdown or HTML is
interpreted (``__init__`` keeps its underscores, a link its target); only the bodies of
fenced code blocks are coloured, their characters unchanged.
"""

from __future__ import annotations

import asyncio
import gc
import re
from bisect import bisect_right

from rich.cells import cell_len
from rich.console import Group, RenderableType
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual.containers import VerticalScroll
from textual.geometry import Region, Size
from textual.reactive import Reactive
from textual.strip import Strip
from textual.timer import Timer
from textual.widget import Widget
from textual.widgets import Static

from opt_tpu_tui.chat import Turn
from opt_tpu_tui.chat_controller import TokenBuffer
from opt_tpu_tui.export import FENCE
from opt_tpu_tui.generation import stop_words
from opt_tpu_tui.safe_text import terminal_safe
from opt_tpu_tui.tui.messages import FlushReply

MARKED = ("max_new_tokens", "context", "stop_string")  # the ends a reply is marked with, besides stopped and failed
FLUSH_HZ = 8  # streamed text reaches the view this often: smooth to the eye, few frames on the wire
CODE_THEME = "monokai"  # the colours of fenced code (Rich's Markdown used it before replies became plain text)


def reply_text(text: str) -> Text:
    """A reply as shown: every character of ``text`` (control characters made visible), nothing interpreted.

    Fenced code blocks (the ones f8 copies) keep their fences and have their bodies
    coloured by Pygments where the fence names a language it knows; a lexer that would
    change a character (some normalise line ends) leaves that block uncoloured.
    """
    shown = Text(terminal_safe(text))
    for block in FENCE.finditer(shown.plain):
        language = block.group(0).split("\n", 1)[0][len(block.group(1)) :].strip().split(" ")[0]
        if language:
            _colour_code(shown, block.start(2), block.group(2), language)
    return shown


def _colour_code(shown: Text, start: int, code: str, language: str) -> None:
    """Style ``code`` (at ``start`` in ``shown``) by its tokens; nothing when the language is unknown."""
    from pygments.lexers import get_lexer_by_name  # Rich's own dependency; loaded with the first code block
    from pygments.util import ClassNotFound
    from rich.syntax import Syntax

    try:
        lexer = get_lexer_by_name(language, stripnl=False, stripall=False, ensurenl=False)
    except ClassNotFound:
        return
    tokens = list(lexer.get_tokens(code))
    if "".join(token for _, token in tokens) != code:
        return
    theme = Syntax.get_theme(CODE_THEME)
    at = start
    for kind, token in tokens:
        style = theme.get_style_for_token(kind)
        if token and style.color is not None:
            shown.stylize(Style(color=style.color, bold=style.bold, italic=style.italic), at, at + len(token))
        at += len(token)


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
    to, not just the reply's top.
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


class ReplyRows(Widget):
    """A streaming reply's rows, drawn one by one (Textual's line API): the finished rows,
    the row being written, and empty room after it.

    One widget for all of them: each batch of tokens repaints the row it wrote and
    nothing else. The height grows a room at a time, so the screen is laid out and the
    transcript moves up once per room of text, not per row.
    """

    virtual_size = Reactive(Size(0, 0), layout=False, repaint=False)  # see Transcript.virtual_size

    def __init__(self, room: int) -> None:
        super().__init__()
        self.room = room  # empty rows added when the row being written reaches the bottom
        self.rows: list[str] = []
        self._height = room  # the content height (the transcript's stream layout reads no inline styles)

    def write(self, y: int, text: str) -> None:
        """Make row ``y`` (an existing row or the next one) read ``text``."""
        if y < len(self.rows):
            if self.rows[y] == text:
                return
            self.rows[y] = text
        else:
            assert y == len(self.rows), "rows are written in order"
            self.rows.append(text)
        if y < self._height:
            self.refresh(Region(0, y, self.outer_size.width, 1))
        else:
            self._height = y + self.room
            self.refresh(layout=True)  # the anchored transcript moves up to the rows' end

    def set_room(self, room: int) -> None:
        """Keep ``room`` empty rows after the row being written from now on (the view got shorter or taller).

        A shorter view also loses the room it no longer has, so the row being written stays in view.
        """
        if room == self.room:
            return
        self.room = room
        height = max(1, len(self.rows)) - 1 + room
        if height < self._height:
            self._height = height
            self.refresh(layout=True)

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        return self._height

    def render_line(self, y: int) -> Strip:
        text = self.rows[y] if y < len(self.rows) else ""
        return Strip([Segment(text, self.visual_style.rich_style)], cell_len(text))  # rich_style is not cached


class ReplyView(Static):
    """One reply. It owns its stream: the caller calls :meth:`stream` with the buffer the reply's
    worker fills, then :meth:`finish` once (or :meth:`remove_with_rows`, or :meth:`end_stream`).

    While it streams, this widget is an empty header and the text is in ReplyRows, the
    sibling after it, wrapped as the screen shows it: finished rows are set down once, and
    each batch of tokens repaints the one row being written. The transcript is laid out
    (and moves up) once per two thirds of a view of text, which reaches the terminal as
    a scroll of its own and the new rows (tui/terminal_copy.py); the cost per token does
    not grow with the reply. When the reply ends it is rendered once, as its text (reply_text)
    with how it ended, by this one widget (one widget a reply keeps each layout of a long chat cheap).
    """

    def __init__(
        self, text: str = "", *, label: str = "opt", stopped: bool = False, error: str | None = None,
        streaming: bool = False, variant: tuple[int, int] | None = None, ended: str | None = None,
    ) -> None:  # fmt: skip
        super().__init__(Group(), classes="message assistant-message")  # no rows while it streams
        self.border_title = terminal_safe(label)
        self.text = text  # the reply as generated (the control characters only change on screen)
        self.stopped = stopped
        self.error = error
        self.streaming = streaming
        self.ended = ended  # how the reply ended (GenerationStats.stop_reason), when known
        self.variant = variant  # (shown, of how many) when its message has alternatives (ctrl+g flips them)
        self.rows: ReplyRows | None = None  # while it streams
        self._taken = 0  # how much of self.text is in finished rows
        self._wrapped_at = 0  # the width the rows were wrapped at
        self._rewrap = False
        self._buffer: TokenBuffer | None = None  # what the worker pushes, while it streams
        self._flusher: Timer | None = None
        self._drawing: asyncio.Lock | None = None  # a flush and the reply's end change the rows one at a time

    def on_mount(self) -> None:
        self._show()

    def stream(self, buffer: TokenBuffer) -> None:
        """Draw what the reply's worker pushes into ``buffer``, FLUSH_HZ times a second, until the reply ends.

        A timer posts a FlushReply to this widget rather than drawing itself: a timer's callback runs
        in its own task, and the rows must change one thing at a time (the lock keeps the reply's end,
        which comes from the screen's task, from changing them in the middle of a flush). Python's
        gen-2 collections stall the stream for 200-300 ms (textual.md): none run until it ends.
        """
        self._buffer, self._drawing = buffer, asyncio.Lock()
        gc.disable()
        self._flusher = self.set_interval(1 / FLUSH_HZ, lambda: self.post_message(FlushReply()))

    async def on_flush_reply(self) -> None:
        if self._drawing is not None:
            async with self._drawing:
                text = self._buffer.take() if self._buffer is not None else ""
                if text:
                    await self.append(text)

    async def end_stream(self) -> None:
        """No more text is drawn (a flush under way ends first); the collector runs again.

        Nothing was collected during the stream, so its garbage is all in the young generations.
        A full collection would walk the whole heap, which grows through a long chat (Textual's
        own caches keep up to a thousand old widgets' line caches), so each turn would cost more.
        """
        if self._drawing is not None:
            async with self._drawing:
                if self._stop_flushing():
                    gc.collect(1)

    def _stop_flushing(self) -> bool:
        if self._flusher is None:
            return False
        self._flusher.stop()
        self._flusher = self._buffer = None
        gc.enable()
        return True

    def on_unmount(self) -> None:
        self._stop_flushing()  # removed mid-stream (the app closing): the collector must not stay off

    async def append(self, text: str) -> None:
        """Add streamed text: finished rows are set down, the row being written repaints."""
        self.text += text
        width = self._width()
        if self.rows is None or self._rewrap or width != self._wrapped_at:
            await self._lay_out(width)
            return
        self.rows.set_room(self._room())
        self._write_rows(self.rows, width)

    def _write_rows(self, rows: ReplyRows, width: int) -> None:
        """Set down the text's finished lines after the rows already finished, then the line being written."""
        y = len(rows.rows) - 1 if rows.rows else 0  # the row being written
        while (taken := take_line(self.text[self._taken :], width)) is not None:
            self._taken = len(self.text) - len(taken[1])
            rows.write(y, terminal_safe(taken[0]))
            y += 1
        rows.write(y, terminal_safe(self.text[self._taken :]))

    @property
    def _transcript(self) -> Widget:
        assert isinstance(self.parent, Widget), "a reply streams inside the transcript"
        return self.parent

    def _width(self) -> int:
        """The text width of a row: the transcript's (less its scrollbar), less a row's left bar and padding."""
        return max(1, self._transcript.scrollable_content_region.width - 3)

    def _room(self) -> int:
        return max(1, self._transcript.size.height * 2 // 3)  # two thirds of the view

    async def _lay_out(self, width: int) -> None:
        """Wrap the whole reply at ``width`` into fresh rows (at the start, and after a resize)."""
        rows = ReplyRows(room=self._room())
        self._taken = 0
        self._write_rows(rows, width)
        with self.app.batch_update():
            await self._remove_rows()
            self.rows = rows
            await self._mount_rows(rows)
        self._wrapped_at, self._rewrap = width, False

    async def _mount_rows(self, rows: ReplyRows) -> None:
        await self._transcript.mount(rows, after=self)

    async def _remove_rows(self) -> None:
        if self.rows is not None:
            rows, self.rows = self.rows, None
            await rows.remove()

    def on_resize(self) -> None:
        """Rows wrapped at the old width are wrapped again at the new one, by the next append.

        (Not here: append runs in a flush, under the lock that keeps the reply's end out
        of it, and two tasks changing the widgets at once would interleave at every await.)
        """
        if self.streaming and self.rows is not None and self._width() != self._wrapped_at:
            self._rewrap = True

    async def finish(self, text: str, *, stopped: bool, error: str | None, ended: str | None = None) -> None:
        """The reply has ended: show it in this one widget, and how it ended."""
        await self.end_stream()
        self.text, self.stopped, self.error, self.streaming, self.ended = text, stopped, error, False, ended
        await self._remove_rows()
        self._show()

    def show_variant(self, variant: tuple[int, int] | None) -> None:
        if variant != self.variant:
            self.variant = variant
            self._show()

    async def remove_with_rows(self) -> None:
        await self.end_stream()
        await self._remove_rows()
        await self.remove()

    @property
    def status(self) -> str:
        """How the reply ended, when that is not the model's own end of text ("" then): stopped, failed,
        cut at its token limit or the context's end, or at a stop string (the model began the user's next line)."""
        if self.error:
            return f"⚠ {terminal_safe(self.error)}"
        if self.stopped:
            return "■ stopped"
        return f"■ {stop_words(self.ended)}" if self.ended in MARKED else ""

    def _show(self) -> None:
        """The finished reply's text, then its status in the colour of its left bar."""
        self.set_class(self.stopped, "-stopped")
        self.set_class(bool(self.error), "-error")
        if self.streaming:
            return  # the text is in its rows, the sibling after it
        body: list[RenderableType] = [reply_text(self.text)]
        if self.status:
            colour = self.app.get_css_variables()["error" if self.error else "warning"]
            usual = self.ended == "stop_string" and not (self.stopped or self.error)  # how most chat replies end: quiet
            body.append(Text(self.status, style=Style(dim=True, italic=True) if usual else Style(color=colour, italic=True)))
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
    # Textual lays the screen out again (and repaints the transcript) when a widget's virtual
    # size changes. Only its layout sets this one, so that second layout of each room of a
    # streaming reply would lay out what it just did; the anchor is kept by the first.
    virtual_size = Reactive(Size(0, 0), layout=False, repaint=False)

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

    async def show_turns(
        self, turns: list[Turn], variants: dict[int, tuple[int, int]], label: str, at: int | None = None,
    ) -> list[Static | ReplyView]:  # fmt: skip
        """Mount a window of ``turns`` as widgets, the others counted above and below; returns those of turn ``at``
        (its message and reply) when it is shown, else none.

        The window is the last ``MOUNTED // 2`` turns, so a long chat opens as fast as a
        short one; holding turn ``at`` when that is older, with a few turns before it for context.
        """
        size = self.MOUNTED // 2
        start = max(0, len(turns) - size)
        if at is not None and at < start:
            start = max(0, at - size // 4)
        end = min(len(turns), start + size)
        await self.clear()
        widgets: list[Static | ReplyView] = []
        for index in range(start, end):
            turn, variant = turns[index], variants.get(index)
            view = ReplyView(turn.assistant, label=label, stopped=turn.stopped, variant=variant, ended=turn.stop_reason)
            widgets += [UserMessage(turn.user), view]
        self.hidden_messages = 2 * start
        await self.add(*widgets)
        await self.show_later(2 * (len(turns) - end))
        if at is None or not 0 <= at < len(turns):
            return []
        return widgets[2 * (at - start) : 2 * (at - start) + 2]

    def scroll_to_match(self, found: Widget, matched: str) -> None:
        """Scroll ``found`` to the top of the view (one line above the ``matched`` text when that is further down)."""
        top = found.virtual_region.y
        row = top + row_of(found, matched)
        if row >= top + self.scrollable_content_region.height:
            top = row - 1  # a line above the match, for context
        self.scroll_to(y=top, animate=False)
