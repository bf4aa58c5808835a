"""A copy of what the terminal shows, so an update writes only the cells that changed, and scrolled rows move in the terminal.

Textual repaints every row of a region whose widgets moved. When the transcript scrolls
by k rows it sends all of it again (about 4 kB at 80x24, over SSH), though all but k of
those rows are already on the screen, k rows higher; and it re-sends whole rows whose
text did not change. So streaming cost little per token between scrolls and a lump at
each, and what a stretch of tokens cost depended on how many lumps fell in it.

Here every partial update is compared with a copy of the screen, kept cell by cell as
the updates are written. A band of rows whose content moved up or down is moved by the
terminal itself: a scroll region (DECSTBM) and line feeds at its bottom or reverse
indexes at its top, which every VT100-compatible terminal has (tmux, xterm, VTE, the
Linux console). Then of each row only the cells that differ are written. Full updates
(the first frame, a resize, a resume) are written as Textual made them and become the
copy. Cells not known (never fully written, or scrolled in blank) are always written.
"""

from __future__ import annotations

from collections import Counter
from itertools import groupby, repeat
from operator import itemgetter, ne
from typing import TYPE_CHECKING, Any, Iterable, List, Optional, Sequence, Tuple

from rich.cells import get_character_cell_size
from rich.console import Console, RenderableType
from rich.control import Control
from rich.segment import Segment
from rich.style import Style
from textual.geometry import Size
from textual.strip import Strip

from opt_tpu_tui.tui.textual_patches import ChopsUpdate, LayoutUpdate  # Textual internals: one place

if TYPE_CHECKING:
    from textual.screen import Screen

Cell = Tuple[str, Optional[Style]]  # a cell's text ("" for the right half of a wide character) and style
Row = List[Optional[Cell]]  # None where what the terminal shows is not known
Piece = Tuple[int, Strip, int]  # a part of a row Textual wrote: its column, its strip, its end column
MIN_SCROLL_ROWS = 4  # a band shorter than this is cheaper written than scrolled
SCROLL_CANDIDATES = 2  # shifts tried, the most voted first
SCROLL_OVERHEAD = 24  # cells a scroll's escape sequences cost, about


def cells(strip: Strip) -> list[Cell] | None:
    """A strip's cells, a wide character's right half as ""; None if its widths are beyond this (then it is written as it is)."""
    out: list[Cell] = []
    for text, style, control in strip:
        if control:
            continue  # cursor moves and the like take no cells (the compositor's strips hold none)
        if text.isascii() and text.isprintable():
            out.extend(zip(text, repeat(style)))
            continue
        for char in text:
            if char in "\u200d\ufe0f" or not char.isprintable() and ord(char) < 0xA0:
                return None  # joined emoji and control characters: widths rich and terminals may not agree on
            width = get_character_cell_size(char)
            if width == 1:
                out.append((char, style))
            elif width == 2:
                out += [(char, style), ("", style)]
            elif out and out[-1][0]:
                out[-1] = (out[-1][0] + char, out[-1][1])  # a combining mark rides on the cell before it
            else:
                return None
    return out


def render(row: Sequence[Cell], console: Console) -> str:
    """Cells as terminal text, a run of one style as one segment (as Textual renders a strip)."""
    segments = [Segment("".join(text for text, _ in run), style) for style, run in groupby(row, itemgetter(1))]
    return Strip(segments).render(console)


class TerminalCopy:
    """What the terminal shows, cell by cell, as far as it is known."""

    def __init__(self) -> None:
        self.size = Size(0, 0)
        self.rows: list[Row] = []

    def forget(self, size: Size | None = None) -> None:
        """Nothing is known (the terminal was cleared, resized or handed to another program)."""
        self.size = self.size if size is None else size
        self.rows = [[None] * self.size.width for _ in range(self.size.height)]

    def wrap(self, update: RenderableType | None, size: Size) -> RenderableType | None:
        """Textual's update for a ``size`` screen, as one that keeps this copy (and writes less, when partial)."""
        if size != self.size:
            self.forget(size)
        if isinstance(update, ChopsUpdate):
            return DiffedUpdate(update, self)
        if isinstance(update, LayoutUpdate):
            return RecordedUpdate(update, self)
        return update

    def record(self, y: int, x: int, strip: Strip) -> None:
        if not 0 <= y < len(self.rows):
            return
        new = cells(strip)
        row = self.rows[y]
        if new is None or x + len(new) > len(row):
            row[x:] = repeat(None, len(row) - x)
        else:
            row[x : x + len(new)] = new

    def scroll(self, top: int, bottom: int, shift: int) -> str:
        """Move rows ``top``..``bottom`` (inclusive) up by ``shift`` (down if negative) in the terminal and here."""
        rows, blank = self.rows, [None] * self.size.width
        if shift > 0:
            rows[top : bottom + 1] = rows[top + shift : bottom + 1] + [blank[:] for _ in range(shift)]
            moves = f"\x1b[{bottom + 1};1H" + "\n" * shift  # a line feed at the bottom margin scrolls up
        else:
            rows[top : bottom + 1] = [blank[:] for _ in range(-shift)] + rows[top : bottom + 1 + shift]
            moves = f"\x1b[{top + 1};1H" + "\x1bM" * -shift  # a reverse index at the top margin scrolls down
        # plain colours for the rows scrolled in; the region set and reset (which also homes the cursor)
        return f"\x1b[0m\x1b[{top + 1};{bottom + 1}r{moves}\x1b[r"


class RecordedUpdate(LayoutUpdate):
    """A full update, written as Textual made it, that becomes the copy."""

    def __init__(self, update: LayoutUpdate, copy: TerminalCopy) -> None:
        super().__init__(update.strips, update.region)
        self._copy = copy

    def render_segments(self, console: Console) -> str:
        for y, line in enumerate(self.strips, self.region.y):  # Textual 8: a line's strips; 6: the line's strip
            self._copy.record(y, self.region.x, line if isinstance(line, Strip) else Strip.join(line))
        return super().render_segments(console)


class DiffedUpdate(ChopsUpdate):
    """A partial update, written as the scrolls and cells that make the terminal show it."""

    def __init__(self, update: ChopsUpdate, copy: TerminalCopy) -> None:
        super().__init__(update.chops, update.spans, update.chop_ends)
        self._copy = copy

    def _pieces(self) -> dict[int, list[Piece]]:
        """The parts of each row Textual writes (as its render_segments does: whole cuts, cut at a span's end)."""
        pieces: dict[int, list[Piece]] = {}
        for y, x1, x2 in self.spans:
            if not 0 <= y < len(self.chops):
                continue
            for end, (x, strip) in zip(self.chop_ends[y], self.chops[y].items()):
                if strip is None or x >= x2 or end <= x1:
                    continue
                if end > x2:
                    strip, end = strip.crop(0, x2 - x), x2
                pieces.setdefault(y, []).append((x, strip, end))
        return pieces

    def render_segments(self, console: Console) -> str:
        copy = self._copy
        width = copy.size.width
        out: list[str] = []
        new: dict[int, Row] = {}  # the touched rows as they must show
        for y, pieces in self._pieces().items():
            written = [(x, cells(strip), end) for x, strip, end in pieces]
            if y < len(copy.rows) and all(part is not None and len(part) == end - x and end <= width for x, part, end in written):
                new[y] = row = copy.rows[y][:]
                for x, part, end in written:
                    row[x:end] = part  # type: ignore[assignment]
            else:  # widths this copy cannot follow: the row written as Textual would, and forgotten
                out += [Control.move_to(x, y).segment.text + strip.render(console) for x, strip, _ in pieces]
                if y < len(copy.rows):
                    copy.rows[y] = [None] * width
        scrolls = [self._scroll(band, new) for band in _bands(sorted(new))]
        for y, row in sorted(new.items()):
            out.append(_changes(y, row, copy.rows[y], console))
            copy.rows[y] = row
        return "".join(scrolls) + "".join(out)

    def _scroll(self, band: list[int], new: dict[int, Row]) -> str:
        """Scroll the band in the terminal if that leaves fewer cells to write (and the copy with it)."""
        copy = self._copy
        top, bottom = band[0], band[-1]
        old = copy.rows
        if len(band) < MIN_SCROLL_ROWS or any(None in old[y] or None in new[y] for y in band):
            return ""
        old_at: dict[str, list[int]] = {}  # rows by their text (styles are weighed by the cost below)
        for y in band:
            old_at.setdefault(_text(old[y]), []).append(y)
        votes: Counter[int] = Counter()
        for y in band:
            if new[y] != old[y]:
                votes.update(was - y for was in old_at.get(_text(new[y]), ()) if 0 < abs(was - y) <= bottom - top)
        if not votes:
            return ""

        def cost(shift: int) -> int:
            """Cells to write after a scroll by ``shift``: those that differ, and every cell scrolled in."""
            total = 0
            for y in band:
                was = y + shift
                total += sum(map(ne, new[y], old[was])) if top <= was <= bottom else copy.size.width
            return total

        costs = {shift: cost(shift) for shift, _ in votes.most_common(SCROLL_CANDIDATES)}
        best = min(costs, key=costs.__getitem__)
        if costs[best] + SCROLL_OVERHEAD >= cost(0):
            return ""
        return copy.scroll(top, bottom, best)


def _text(row: Row) -> str:
    return "".join(cell[0] for cell in row)  # type: ignore[index]


def _bands(ys: Sequence[int]) -> Iterable[list[int]]:
    """Runs of consecutive rows."""
    for _, run in groupby(enumerate(ys), lambda pair: pair[1] - pair[0]):
        yield [y for _, y in run]


def _changes(y: int, new: Row, old: Row, console: Console, gap: int = 4) -> str:
    """The writes that turn row ``old`` into ``new``: runs of differing cells, runs closer than ``gap`` joined.

    A run never splits a wide character: its two cells have one text and style, so
    they differ from the old cells together.
    """
    runs: list[list[int]] = []
    for x, cell in enumerate(new):
        if cell is None or cell == old[x]:
            continue
        if runs and x - runs[-1][1] <= gap and None not in new[runs[-1][1] : x]:
            runs[-1][1] = x + 1
        else:
            runs.append([x, x + 1])
    return "".join(
        Control.move_to(start, y).segment.text + render(new[start:end], console)  # type: ignore[arg-type]
        for start, end in runs
    )


class CopiedTerminal:
    """Mixed into the App (first): every update it writes goes through one TerminalCopy (see the module's docstring).

    The App's ``_display`` is where each screen's update reaches the terminal, whichever
    screen made it; a copy per App is a copy per terminal.
    """

    _terminal_copy: TerminalCopy

    def _display(self, screen: Screen[Any], renderable: RenderableType | None) -> None:
        app: Any = self
        if not hasattr(self, "_terminal_copy"):
            self._terminal_copy = TerminalCopy()
            app.app_resume_signal.subscribe(app, lambda _app: self._terminal_copy.forget())
        super()._display(screen, self._terminal_copy.wrap(renderable, app.size))  # type: ignore[misc]

