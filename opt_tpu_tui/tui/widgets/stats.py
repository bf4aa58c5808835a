"""The device-stats pane: figures as a small table and a sparkline of decode tokens/s."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from rich.table import Table
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Label, Sparkline, Static

from opt_tpu_tui.devices import DeviceSample, human_bytes

SPARK_POINTS = 30


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
        ("Context", f"{view.context_used} / {view.context_size}" if view.context_size else "—"),
        ("Prefill", prefill(view)),
        ("Decode", "—" if view.tokens_per_second is None else f"{view.tokens_per_second:.1f} tok/s"),
    ]
    device = view.device
    if device is not None and device.kind == "tpu":
        temp = "n/a" if device.chip_temp is None else f"{device.chip_temp:.0f} °C"
        out += [
            ("TPU", _pct(device.tpu_util)),
            ("TPU mem", _mem(device.tpu_mem_used, device.tpu_mem_total)),
            ("Chip temp", temp),
        ]
    if device is not None:
        out += [("Host CPU", _pct(device.cpu_percent)), ("Host mem", _mem(device.mem_used, device.mem_total))]
    return out


class StatsPanel(Vertical):
    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._speeds: deque[float] = deque([0.0] * SPARK_POINTS, maxlen=SPARK_POINTS)
        self.view = StatsView()

    def compose(self) -> ComposeResult:
        yield Static(id="stats-table")
        yield Label("tok/s", id="spark-label")
        yield Sparkline(list(self._speeds), id="spark")

    def show(self, view: StatsView) -> None:
        self.view = view
        table = Table.grid(padding=(0, 1))
        table.add_column(style="bold", no_wrap=True)
        table.add_column(overflow="ellipsis", no_wrap=True)
        for name, value in rows(view):
            table.add_row(name, value)
        self.query_one("#stats-table", Static).update(table)

    def add_speed(self, tokens_per_second: float) -> None:
        self._speeds.append(tokens_per_second)
        self.query_one(Sparkline).data = list(self._speeds)
        self.query_one("#spark-label", Label).update(f"tok/s (peak {max(self._speeds):.1f})")
