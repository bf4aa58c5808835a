"""Textual's compositor, with each layout compared against what the last layout drew.

Textual repaints after a layout only the regions whose widgets changed, found by
comparing the new layout with the old one. The old one is the compositor's full map,
which Textual also rebuilds lazily, from the widgets as they are now, whenever it is
asked where a widget is and the map is marked stale: a widget off screen that
refreshes marks it so (the side pane's stats, updated while the pane is hidden; a
scroll does too). When a notice times out, removing it asks where its rack is before
the layout runs. The map is rebuilt without the notice, the layout then finds nothing
changed, and the notice's cells stay drawn on the terminal until something else
repaints them (a resize), though Textual has long dropped it.

Here the layout is compared with the map the last layout made (what the screen
shows); the lazily rebuilt map still answers where widgets are.

A repaint of a few rows (a streaming reply's row, say) renders only the widgets seen
in those rows, and only those rows of them. Textual renders every widget whose
container overlaps the rows, all of it that is visible, and keeps the rows it needs:
every row of the transcript's thirty-odd widgets for each batch of tokens.

Textual 6.2 and 8.2 share the code these methods replace.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from textual._compositor import Compositor, CompositorMap, ReflowResult
from textual.geometry import Region, Size
from textual.strip import Strip
from textual.screen import Screen
from textual.widget import Widget


class DrawnCompositor(Compositor):
    """A compositor whose layouts repaint what changed since the last layout, however often the map was re-read."""

    def __init__(self) -> None:
        super().__init__()
        self._drawn: CompositorMap = {}  # the map of the last layout, which the terminal shows

    def reflow(self, parent: Widget, size: Size) -> ReflowResult:
        self._full_map = self._drawn  # the base Textual compares with (a lazy rebuild may have replaced it)
        result = super().reflow(parent, size)
        self._drawn = self._full_map
        return result

    def _get_renders(self, crop: Region | None = None) -> Iterable[tuple[Region, Region, list[Strip]]]:
        """Each widget seen in the rows of ``crop``, rendered in those rows (all of the screen without a crop).

        Yields what Textual's does, with each clip narrowed to the crop's rows, so the
        caller takes the strips from the right row. Not narrowed to its columns: the
        caller splits a strip at the cuts from its clip's left edge, which must be a cut.
        """
        if crop is None:
            yield from super()._get_renders(crop)
            return
        rows = Region(0, crop.y, self.size.width, crop.height)
        for widget, (region, clip) in self.visible_widgets.items():
            seen = region.intersection(clip).intersection(rows)
            if seen:
                part = Region(seen.x - region.x, seen.y - region.y, seen.width, seen.height)
                yield region, clip.intersection(rows), widget.render_lines(part)

    def clear(self) -> None:
        super().clear()
        self._drawn = {}


class DrawnScreen:
    """Mixed into a Screen (first): its layouts use DrawnCompositor."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        assert isinstance(self, Screen)
        self._compositor = DrawnCompositor()  # nothing has been laid out yet
