"""The device-stats pane: one line per figure and a sparkline of decode tokens/s.

The pane owns its sampling: a thread worker takes a device sample a second (a
server's only while the pane shows: each is a request) and posts it as a
DeviceSampled message, which the pane draws and then lets bubble to the screen
(the context meter's tick while a reply streams). It draws only while ``shown``.

Each figure is its own one-line widget, updated only when its text changes: the pane
is sampled once a second, and over SSH a repaint of the whole table every second
was the largest cost of an idle screen.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.reactive import reactive
from textual.widgets import Label, Sparkline, Static
from textual.worker import get_current_worker

from opt_tpu_tui.devices import DeviceSample, human_bytes
from opt_tpu_tui.safe_text import terminal_safe
from opt_tpu_tui.tui.messages import DeviceSampled

if TYPE_CHECKING:
    from opt_tpu_tui.chat_controller import ChatController
    from opt_tpu_tui.engine import Engine

SPARK_POINTS = 30
STATS_PERIOD = 1.0
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
    shown = reactive(False)  # the pane is open on it (the screen's pane reactive sets it): only then does it draw

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._speeds: deque[float] = deque([0.0] * SPARK_POINTS, maxlen=SPARK_POINTS)
        self._shown: dict[str, str | None] = {name: None for name in NAMES}
        self._speeds_drawn = True
        self.view = StatsView()
        self._chat: ChatController | None = None
        self._labels = ("—", "—")  # (backend, model) until an engine gives its own
        self._device: DeviceSample | None = None
        self._stop = threading.Event()

    def follow(self, chat: ChatController, backend: str, model: str) -> None:
        """Show ``chat``'s figures (its engine's once one is attached; ``backend`` and ``model`` before)."""
        self._chat, self._labels = chat, (backend, model)
        self.update_view()

    def sample(self, engine: Engine) -> None:
        """Sample ``engine``'s device from now on, once a second, until the pane is unmounted."""
        self._stop.clear()
        self.update_view()
        self._sample_devices(engine)

    def on_unmount(self) -> None:
        self._stop.set()

    @work(thread=True, exclusive=True, exit_on_error=False, group="stats")
    def _sample_devices(self, engine: Engine) -> None:
        """A sample a second (a server's only while the pane shows it: each is a request); also the meter's tick."""
        worker = get_current_worker()
        while not worker.is_cancelled and not self._stop.is_set():
            sample = self._device
            if not engine.remote or self.shown:
                try:
                    sample = engine.sample_device()
                except Exception:  # noqa: BLE001 - a broken source must not end the pane
                    sample = DeviceSample("host")
            self.post_message(DeviceSampled(sample or DeviceSample("host")))
            self._stop.wait(STATS_PERIOD)

    def on_device_sampled(self, message: DeviceSampled) -> None:
        """Take the sample (and the streaming reply's figures so far) and draw; the message goes on to the screen."""
        self._device = message.sample
        streaming = self._chat.streaming if self._chat is not None else None
        if streaming is not None and self._chat is not None:
            self._chat.take_figures(streaming.reply)
            self.add_speed(streaming.reply.stats.tokens_per_second)
        self.update_view()

    def watch_shown(self, shown: bool) -> None:
        if shown:
            self.update_view()  # what was sampled while it was hidden

    def update_view(self) -> None:
        """The lines and speed graph, when the pane is open: an update of a hidden widget costs
        Textual a re-read of the whole layout, each second. Opening the pane shows what it missed."""
        if not self.shown or self._chat is None:
            return
        engine, figures = self._chat.engine, self._chat.figures
        self.show(
            StatsView(
                backend=engine.name if engine else self._labels[0],
                model=engine.model_name if engine else self._labels[1],
                context_used=figures.context_used,
                context_size=engine.context_length if engine else 0,
                prefill_seconds=figures.prefill_seconds,
                cached_tokens=figures.cached_tokens,
                tokens_per_second=figures.tokens_per_second,
                device=self._device,
            )
        )

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
