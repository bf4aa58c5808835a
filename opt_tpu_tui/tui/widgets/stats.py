"""The device-stats pane: one line per figure and a sparkline of decode tokens/s.

Each figure is its own one-line widget, updated only when its text changes: the pane
is sampled once a second, and over SSH a repaint of the whole table every second
was the largest cost of an idle screen.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Label, Sparkline, Static

from opt_tpu_tui.devices import DeviceSample, human_bytes
from opt_tpu_tui.safe_text import terminal_safe

SPARK_POINTS = 30
NAMES = ("Backend", "Model", "KV cache", "Prefill", "Decode", "TPU", "TPU mem", "Chip temp", "Host CPU", "Host mem")
NAME_WIDTH = max(len(name) for name in NAMES) + 1
UNAVAILABLE = "unavailable"


def row_id(name: str) -> str:
    return "stats-" + name.lower().replace(" ", "-")


@dataclass(frozen=True)
class StatsView:
    """What the pane shows; built by the screen from the backend, the last reply and a device sample."""

    backend: str = "—"
    model: str = "—"
    context_used: int = 0
    context_size: int = 0
    prefill_seconds: float | None = None
    cached_tokens: int = 0  # of the last prompt, kept from the previous turn's cache
    tokens_per_second: float | None = None
    device: DeviceSample | None = None


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f} %"


def _mem(used: int | None, total: int | None) -> str:
    if used is None or total is None:
        return "n/a"
    return f"{human_bytes(used)} / {human_bytes(total)}"


def prefill(view: StatsView) -> str:
    if view.prefill_seconds is None:
        return "—"
    cached = f" ({view.cached_tokens} cached)" if view.cached_tokens else ""
    return f"{view.prefill_seconds * 1000:.0f} ms{cached}"


def rows(view: StatsView) -> list[tuple[str, str]]:
    out = [
        ("Backend", view.backend),
        ("Model", view.model),
        ("KV cache", f"{view.context_used} / {view.context_size}" if view.context_size else "—"),
        ("Prefill", prefill(view)),
        ("Decode", "—" if view.tokens_per_second is None else f"{view.tokens_per_second:.1f} tok/s"),
    ]
    device = view.device
    if device is not None and device.kind == "tpu":
        temp = "n/a" if device.chip_temp is None else f"{device.chip_temp:.0f} °C"
        shown = {
            "tpu_util": ("TPU", _pct(device.tpu_util)),
            "tpu_mem": ("TPU mem", _mem(device.tpu_mem_used, device.tpu_mem_total)),
            "chip_temp": ("Chip temp", temp),
        }
        # A figure no source can give any more says so, rather than an "n/a" that looks like a pending reading.
        out += [(name, UNAVAILABLE if field in device.unavailable else text) for field, (name, text) in shown.items()]
    if device is not None:
        out += [("Host CPU", _pct(device.cpu_percent)), ("Host mem", _mem(device.mem_used, device.mem_total))]
    return out


class StatsPanel(Vertical):
    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._speeds: deque[float] = deque([0.0] * SPARK_POINTS, maxlen=SPARK_POINTS)
        self._shown: dict[str, str | None] = {name: None for name in NAMES}
        self._speeds_drawn = True
        self.view = StatsView()

    def compose(self) -> ComposeResult:
        for name in NAMES:
            row = Static("", classes="stats-row", id=row_id(name))
            row.display = False  # until it has a value: a source this device lacks takes no line
            yield row
        yield Label("tok/s", id="spark-label")
        yield Sparkline(list(self._speeds), id="spark")

    def show(self, view: StatsView) -> None:
        """Show ``view``, repainting only the lines whose text changed (and the speeds taken while hidden)."""
        self.view = view
        self._show_speeds()
        values = dict(rows(view))
        for name in NAMES:
            value = values.get(name)
            if value == self._shown[name]:
                continue
            self._shown[name] = value
            line = self.query_one(f"#{row_id(name)}", Static)
            shown_before = line.display
            line.display = value is not None
            if value is not None:
                text = Text.assemble((name.ljust(NAME_WIDTH), "bold"), terminal_safe(value), no_wrap=True, overflow="ellipsis")
                line.update(text, layout=not shown_before)  # a line's new value keeps its one row: no layout then

    def add_speed(self, tokens_per_second: float) -> None:
        """Take a speed; it is drawn by the next :meth:`show` (none while the pane is hidden)."""
        self._speeds.append(tokens_per_second)
        self._speeds_drawn = False

    def _show_speeds(self) -> None:
        if self._speeds_drawn:
            return
        self._speeds_drawn = True
        self.query_one(Sparkline).data = list(self._speeds)
        self.query_one("#spark-label", Label).update(f"tok/s (peak {max(self._speeds):.1f})", layout=False)
