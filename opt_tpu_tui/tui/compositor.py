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

A partial repaint (a streaming reply's row, say) renders only the widgets it touches,
and only the rows it touches of them. Textual renders every widget whose container
overlaps the bounding box of everything repainted, all of it that is visible, and keeps
the rows it needs: every row of the transcript's widgets for each batch of tokens, and
for the stats pane's refresh too when the status line above the chat changed with it.

Textual 6.2 and 8.2 share the code these methods replace.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from textual.geometry import Region, Size
from textual.strip import Strip
from textual.screen import Screen
from textual.widget import Widget

from opt_tpu_tui.tui.textual_patches import ChopsUpdate, Compositor, CompositorMap, ReflowResult  # Textual internals: one place


class DrawnCompositor(Compositor):
    """A compositor whose layouts repaint what changed since the last layout, however often the map was re-read."""

    def __init__(self) -> None:
        super().__init__()
        self._drawn: CompositorMap = {}  # the map of the last layout, which the terminal shows
        self._updating: list[Region] = []  # the regions of the partial update being rendered

    def reflow(self, parent: Widget, size: Size) -> ReflowResult:
        self._full_map = self._drawn  # the base Textual compares with (a lazy rebuild may have replaced it)
        result = super().reflow(parent, size)
        self._drawn = self._full_map
        return result

    def render_partial_update(self) -> ChopsUpdate | None:
        self._updating = list(self._dirty_regions)  # Textual hands _get_renders only their bounding box
        try:
            return super().render_partial_update()
        finally:
            self._updating = []

    def _get_renders(self, crop: Region | None = None) -> Iterable[tuple[Region, Region, list[Strip]]]:
        """Each widget a partial update touches, rendered in the rows it touches (all of the screen otherwise).

        Yields what Textual's does, with each clip narrowed to those rows, so the caller
        takes the strips from the right row. Not narrowed to columns: the caller splits
        a strip at the cuts from its clip's left edge, which must be a cut. A widget the
        update does not touch is left out: it would only fill cuts that no span writes.
        """
        if crop is None or not self._updating:
            yield from super()._get_renders(crop)
            return
        width = self.size.width
        for widget, (region, clip) in self.visible_widgets.items():
            seen = region.intersection(clip)
            if not seen.overlaps(crop):
                continue
            touched = [part for update in self._updating if (part := seen.intersection(update))]
            if touched:
                top, bottom = min(part.y for part in touched), max(part.bottom for part in touched)
                rows = Region(0, top, width, bottom - top)
                seen = seen.intersection(rows)
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
