"""The terminal copy's output, replayed in an independent terminal emulator (pyte), shows what Textual meant to show.

Screens of random text (wide characters and colours among it) change as the app's do:
a band scrolls up or down with new rows coming in, a band scrolls beside columns that
stay (a side pane), single rows change in part, rows are written whose old content was
never known. Each change is given to the copy as the partial update Textual's
compositor would make; what the copy writes is fed to pyte, whose screen must then hold
the intended text and colours, cell for cell. And a scroll must cost a fraction of
Textual's own update, which is what the copy is for.
"""

from __future__ import annotations

import random
from itertools import groupby
from operator import itemgetter

import pyte
import pytest
import textual
from rich.console import Console
from rich.segment import Segment
from rich.style import Style
from textual._compositor import ChopsUpdate, LayoutUpdate
from textual.geometry import Region, Size
from textual.strip import Strip

from opt_tpu_tui.tui.terminal_copy import Cell, TerminalCopy

TEXTUAL_6 = textual.__version__.startswith("6.")  # the box's Python 3.8
WIDTH, HEIGHT = 40, 16
STYLES = [Style(), Style(color="red"), Style(bgcolor="blue"), Style(bold=True)]
PYTE_COLOURS = {None: "default", "red": "red", "blue": "blue"}
CHARS = "abcdefgh  ."
WIDE = ("界", "水")


def random_row(rng: random.Random, width: int) -> list[Cell]:
    """Random cells, runs of a style, now and then a wide character (never cut at the edge)."""
    row: list[Cell] = []
    style = rng.choice(STYLES)
    while len(row) < width:
        if rng.random() < 0.15:
            style = rng.choice(STYLES)
        if rng.random() < 0.1 and len(row) < width - 1:
            row += [(rng.choice(WIDE), style), ("", style)]
        else:
            row.append((rng.choice(CHARS), style))
    return row


def strip_of(cells: list[Cell]) -> Strip:
    return Strip([Segment("".join(text for text, _ in run), style) for style, run in groupby(cells, itemgetter(1))])


class Terminal:
    """The intended screen, the copy, and pyte fed with what the copy writes."""

    def __init__(self, rng: random.Random) -> None:
        self.console = Console(width=WIDTH, height=HEIGHT, color_system="truecolor", force_terminal=True)
        self.copy = TerminalCopy()
        self.screen = pyte.Screen(WIDTH, HEIGHT)
        self.stream = pyte.Stream(self.screen)
        self.rows = [random_row(rng, WIDTH) for _ in range(HEIGHT)]
        self.written = 0
        self.last = ""

    def feed(self, text: str) -> None:
        self.written += len(text.encode())
        self.last = text
        self.stream.feed(text)

    def full(self) -> None:
        strips = [strip_of(row) for row in self.rows]
        lines = strips if TEXTUAL_6 else [[strip] for strip in strips]  # Textual 8 keeps each line's strips apart
        update = LayoutUpdate(lines, Region(0, 0, WIDTH, HEIGHT))
        self.feed(self.copy.wrap(update, Size(WIDTH, HEIGHT)).render_segments(self.console))

    def partial(self, spans: list[tuple[int, int, int]], cut: int | None = None) -> str:
        """Write the intended rows over ``spans`` (y, x1, x2), each row cut in two at ``cut`` as a side pane would."""
        chops, ends = [], []
        for y, row in enumerate(self.rows):
            cuts = [0, cut, WIDTH] if cut else [0, WIDTH]
            ends.append(cuts[1:])
            touched = any(span[0] == y for span in spans)
            chops.append({x: strip_of(row[x:end]) if touched else None for x, end in zip(cuts, cuts[1:])})
        update = ChopsUpdate(chops, spans, ends)
        reference = update.render_segments(self.console)  # what Textual itself would write
        written = self.copy.wrap(update, Size(WIDTH, HEIGHT)).render_segments(self.console)
        self.feed(written)
        return reference

    def assert_shows_the_rows(self) -> None:
        for y, row in enumerate(self.rows):
            shown = self.screen.buffer[y]
            for x, (text, style) in enumerate(row):
                cell = shown[x]
                if text == "":
                    continue  # the right half of a wide character: pyte keeps it empty
                assert cell.data == text, f"row {y} col {x}: {cell.data!r} for {text!r}\n{self.show()}"
                assert cell.fg == PYTE_COLOURS[style.color.name if style.color else None], f"fg at {x},{y}"
                assert cell.bg == PYTE_COLOURS[style.bgcolor.name if style.bgcolor else None], f"bg at {x},{y}"
                assert cell.bold == bool(style.bold), f"bold at {x},{y}"

    def show(self) -> str:
        return "\n".join(self.screen.display)


def mend(row: list[Cell], cut: int | None = None) -> None:
    """Blank the halves of wide characters left alone by a change (and any across ``cut``), as a real screen has none."""
    for x, (text, style) in enumerate(row):
        if text in WIDE and (x + 1 == len(row) or row[x + 1][0] != "" or x + 1 == cut):
            row[x] = (" ", style)
        elif text == "" and (x == 0 or row[x - 1][0] not in WIDE):
            row[x] = (" ", style)


def scroll_band(term: Terminal, rng: random.Random, top: int, bottom: int, shift: int, right: int) -> None:
    """Move the first ``right`` columns of rows top..bottom by ``shift`` rows (up if positive), new rows coming in."""
    old = [row[:] for row in term.rows]
    for y in range(top, bottom + 1):
        was = y + shift
        source = old[was] if top <= was <= bottom else random_row(rng, WIDTH)
        term.rows[y][:right] = source[:right]
        mend(term.rows[y], cut=right)


@pytest.mark.parametrize("seed", range(12))
def test_what_the_copy_writes_shows_the_intended_screen(seed: int) -> None:
    rng = random.Random(seed)
    term = Terminal(rng)
    term.full()
    term.assert_shows_the_rows()
    for _ in range(30):
        kind = rng.choice(["scroll", "scroll", "beside", "row", "forget"])
        if kind == "forget":  # the terminal was handed over: nothing known, everything written
            term.copy.forget()
            term.rows = [random_row(rng, WIDTH) for _ in range(HEIGHT)]
            term.partial([(y, 0, WIDTH) for y in range(HEIGHT)])
        elif kind == "row":
            y, x1 = rng.randrange(HEIGHT), rng.randrange(WIDTH - 5)
            x2 = rng.randrange(x1 + 1, WIDTH + 1)
            term.rows[y][x1:x2] = random_row(rng, WIDTH)[x1:x2]
            mend(term.rows[y])
            term.partial([(y, 0, WIDTH)])
        else:
            top = rng.randrange(HEIGHT - 4)
            bottom = rng.randrange(top + 3, HEIGHT)
            shift = rng.choice([-1, 1]) * rng.randrange(1, bottom - top + 1)
            # a side pane's edge, where no character of the band straddles it (widgets never share a cell)
            edges = [x for x in range(WIDTH // 2, WIDTH - 4) if all(term.rows[y][x][0] for y in range(top, bottom + 1))]
            right = WIDTH if kind == "scroll" or not edges else rng.choice(edges)
            scroll_band(term, rng, top, bottom, shift, right)
            for _ in range(rng.randrange(3)):  # and a few cells in it change besides
                y, x = rng.randrange(top, bottom + 1), rng.randrange(right)
                if term.rows[y][x][0] not in WIDE and term.rows[y][x][0]:
                    term.rows[y][x] = ("z", term.rows[y][x][1])
            term.partial([(y, 0, right) for y in range(top, bottom + 1)], cut=None if right == WIDTH else right)
        term.assert_shows_the_rows()


def test_a_scrolled_transcript_costs_a_fraction_of_textuals_update() -> None:
    rng = random.Random(1)
    term = Terminal(rng)
    term.full()
    before = term.written
    scroll_band(term, rng, 1, HEIGHT - 3, 3, WIDTH)  # the transcript, below a status line and above a prompt
    reference = term.partial([(y, 0, WIDTH) for y in range(1, HEIGHT - 2)])
    term.assert_shows_the_rows()
    assert f"\x1b[2;{HEIGHT - 2}r" in term.last  # scrolled in the terminal, rows 2 to 14
    assert term.written - before < len(reference.encode()) / 2, (term.written - before, len(reference.encode()))


def test_an_unchanged_row_costs_nothing_and_a_changed_cell_little() -> None:
    term = Terminal(random.Random(2))
    term.full()
    before = term.written
    term.partial([(3, 0, WIDTH)])
    assert term.written == before
    term.rows[3][5] = ("Q", STYLES[1])
    if term.rows[3][6][0] == "":
        term.rows[3][6] = (" ", STYLES[1])
    term.partial([(3, 0, WIDTH)])
    term.assert_shows_the_rows()
    assert term.written - before < 40  # a cursor move and the cell, not the row


def test_a_row_whose_widths_the_copy_cannot_follow_is_written_as_textual_would_and_forgotten() -> None:
    """Joined emoji (ZWJ) are as wide as rich and each terminal decide: the row goes out as Textual made it,
    and the next change to it is written whole, whatever the emulator made of the emoji."""
    term = Terminal(random.Random(3))
    term.full()
    plain = [(char, Style()) for char in "ab".ljust(WIDTH)]
    term.rows[2] = [("\U0001f469\u200d\U0001f4bb", Style()), ("", Style())] + plain[2:]
    reference = term.partial([(2, 0, WIDTH)])
    assert term.last == reference
    term.rows[2] = plain
    term.partial([(2, 0, WIDTH)])
    term.assert_shows_the_rows()
    assert term.last.count(" ") >= WIDTH - 2  # the whole row, though only its first two cells changed
