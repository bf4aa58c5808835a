"""Search every saved conversation: type words, pick a match, and the chat opens at it.

The query runs as the user types, after a short pause (each key does not start a scan
of the whole history), in a thread: the store's LIKE scan is fast on a usual history but
grows with it, and the UI must not wait on it. A result that arrives after the query
changed again is dropped. The focus stays in the query box; ↑/↓ move through the results,
and enter opens the highlighted one (or, typed before any result showed, the first).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Optional

from rich.style import Style
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.timer import Timer
from textual.widgets import Input, Label, OptionList
from textual.widgets.option_list import Option

from opt_tpu_tui.errors import UserError
from opt_tpu_tui.history import SearchHit
from opt_tpu_tui.safe_text import terminal_safe
from opt_tpu_tui.tui.compositor import DrawnScreen

DEBOUNCE = 0.15  # seconds of no typing before the history is searched
TITLE = "Search chats · ↑↓ select · enter opens · esc closes"  # fits 60 columns
WHERE = {"title": "title", "user": "you", "assistant": "reply"}
MATCH = Style(bold=True, underline=True)  # not a colour: it shows with NO_COLOR too


def describe(hit: SearchHit) -> Text:
    """Two rows: the conversation and where in it, then the snippet with the match marked."""
    where = WHERE[hit.field] if hit.turn is None else f"turn {hit.turn + 1} · {WHERE[hit.field]}"
    if hit.variant:
        where += " · another variant"  # opening it shows that variant
    text = Text(no_wrap=True, overflow="ellipsis")
    text.append(f"{terminal_safe(hit.title)} · {where}\n", style="dim")
    text.append("  " + hit.snippet)  # the store made the snippet safe to print
    start, end = hit.match
    text.stylize(MATCH, len(text) - len(hit.snippet) + start, len(text) - len(hit.snippet) + end)
    return text


class SearchScreen(DrawnScreen, ModalScreen[Optional[SearchHit]]):  # evaluated at import: no `|` on 3.8
    """Dismisses with the chosen match (the main screen opens its conversation at it), or None."""

    CSS_PATH = "modal.tcss"
    AUTO_FOCUS = "#search-query"

    BINDINGS = [
        Binding("escape", "close", "Close", id="search.close"),
        Binding("down", "move('down')", "Next", show=False, id="search.next"),
        Binding("up", "move('up')", "Previous", show=False, id="search.previous"),
    ]

    def __init__(self, search: Callable[[str], list[SearchHit]], problem: str | None = None) -> None:
        super().__init__()
        self._search = search  # the store's search, supplied by the main screen
        self._problem = problem  # why there is no history to search, shown in place of results
        self._said: str | None = None  # the problem last told in a notice
        self.hits: list[SearchHit] = []
        self._timer: Timer | None = None
        self.searched = ""  # the query whose results are shown (tests wait on it)

    def compose(self) -> ComposeResult:
        with Vertical(id="search-body"):
            yield Label(TITLE, id="search-title", markup=False)
            yield Input(id="search-query", placeholder="words to find in titles, messages and replies", compact=True)
            yield OptionList(id="search-results")

    def on_mount(self) -> None:
        if self._problem:
            self._show("", [], self._problem)

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        if self._timer is not None:
            self._timer.stop()
        self._timer = self.set_timer(DEBOUNCE, lambda: self._run(event.value))

    @work(thread=True, exclusive=True, exit_on_error=False, group="search")
    def _run(self, query: str) -> None:
        try:
            hits = self._find(query)
        except UserError as error:  # the history was found damaged: said in the list, in one line
            self.app.call_from_thread(self._show, query, [], str(error))
            return
        self.app.call_from_thread(self._show, query, hits)

    def _find(self, query: str) -> list[SearchHit]:
        """The store's search, or the reason there is none (the list shows it, typed-ahead keys land here)."""
        if self._problem:
            raise UserError(self._problem)
        return self._search(query)

    def _show(self, query: str, hits: list[SearchHit], problem: str | None = None) -> None:
        """Show the results of ``query``, unless the user has typed on since (or closed the screen);
        ``problem`` instead when the history could not be searched."""
        if self.app.screen is not self or query != self.query_one(Input).value:
            return
        self.hits, self.searched = hits, query
        results = self.query_one(OptionList)
        results.clear_options()
        if problem:
            results.add_option(Option(Text(problem, no_wrap=True, overflow="ellipsis"), disabled=True))
            if problem != self._said:
                self.notify(problem, title="No history", severity="error", timeout=20)  # the whole line, once
                self._said = problem
        elif hits:
            results.add_options([Option(describe(hit)) for hit in hits])
            results.highlighted = 0
        elif query.strip():
            results.add_option(Option("No conversation holds that.", disabled=True))

    def action_move(self, direction: str) -> None:
        results = self.query_one(OptionList)
        if direction == "down":
            results.action_cursor_down()
        else:
            results.action_cursor_up()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        """Open the highlighted match; typed ahead of the results (a burst over SSH), the first match of the query."""
        event.stop()
        index = self.query_one(OptionList).highlighted
        if event.value == self.searched:
            if index is not None and self.hits:
                self.dismiss(self.hits[index])
            return
        try:
            hits = self._find(event.value)
        except UserError as error:
            self._show(event.value, [], str(error))
            return
        if hits:
            self.dismiss(hits[0])
        else:
            self._show(event.value, hits)

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        """A click on a result opens it too."""
        if self.hits:
            self.dismiss(self.hits[event.option_index])

    def action_close(self) -> None:
        self.dismiss(None)
