"""``GET /metrics``: the server's figures in Prometheus' text format (version 0.0.4), written by hand.

Three kinds are enough (counter, gauge, histogram), so no client library is pulled in.
Names follow Prometheus' conventions (base units, ``_total`` on counters) and share the
``opt_tpu_tui_`` prefix. The device figures are the ones the UI's stats pane shows
(devices.py), read when the page is asked for; one that is unavailable is left out.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence

from opt_tpu_tui.devices import DeviceSample

PREFIX = "opt_tpu_tui_"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


def _value(x: float) -> str:
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    return repr(float(x)) if not float(x).is_integer() else str(int(x))


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    escaped = (v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") for v in labels.values())
    return "{" + ",".join(f'{k}="{v}"' for k, v in zip(labels, escaped)) + "}"


class Metric:
    kind = "untyped"

    def __init__(self, name: str, help_text: str) -> None:
        self.name, self.help = PREFIX + name, help_text
        self._lock = threading.Lock()

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]


class Counter(Metric):
    """Counts up, per set of labels."""

    kind = "counter"

    def __init__(self, name: str, help_text: str) -> None:
        super().__init__(name, help_text)
        self.values: dict[tuple[tuple[str, str], ...], float] = {}

    def inc(self, amount: float = 1, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            self.values[key] = self.values.get(key, 0) + amount

    def get(self, **labels: str) -> float:
        return self.values.get(tuple(sorted(labels.items())), 0)

    def render(self) -> list[str]:
        values = self.values or {(): 0}
        return self.header() + [f"{self.name}{_labels(dict(k))} {_value(v)}" for k, v in sorted(values.items())]


class Gauge(Metric):
    kind = "gauge"

    def __init__(self, name: str, help_text: str) -> None:
        super().__init__(name, help_text)
        self.value = 0.0

    def set(self, value: float) -> None:
        self.value = value

    def render(self) -> list[str]:
        return self.header() + [f"{self.name} {_value(self.value)}"]


class Histogram(Metric):
    kind = "histogram"

    def __init__(self, name: str, help_text: str, buckets: Sequence[float]) -> None:
        super().__init__(name, help_text)
        self.buckets = tuple(buckets) + (math.inf,)
        self.counts = [0] * len(self.buckets)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        with self._lock:
            self.sum += value
            self.count += 1
            for i, bound in enumerate(self.buckets):
                if value <= bound:
                    self.counts[i] += 1

    def render(self) -> list[str]:
        lines = self.header()
        for bound, count in zip(self.buckets, self.counts):
            lines.append(f'{self.name}_bucket{{le="{_value(bound)}"}} {count}')
        return lines + [f"{self.name}_sum {_value(self.sum)}", f"{self.name}_count {self.count}"]


class Metrics:
    """Every figure the server keeps; the engine and the HTTP layer update them."""

    def __init__(self) -> None:
        self.requests = Counter("requests_total", "HTTP requests to the API, by endpoint and status code.")
        self.prompt_tokens = Counter("prompt_tokens_total", "Prompt tokens of finished generations.")
        self.reused_tokens = Counter(
            "kv_reused_tokens_total", "Prompt tokens whose K/V were found in the cache (a slot) and not run again."
        )
        self.completion_tokens = Counter("completion_tokens_total", "Tokens generated.")
        self.ttft = Histogram(
            "time_to_first_token_seconds", "From a request's arrival in the queue to its first text.", TTFT_BUCKETS
        )
        self.per_token = Histogram("time_per_output_token_seconds", "Time between output tokens.", TOKEN_BUCKETS)
        self.prefill = Histogram("prefill_seconds", "Time a prompt's prefill took (reused K/V make it short).", TTFT_BUCKETS)
        self.queue_depth = Gauge("queue_depth", "Requests waiting for the device.")
        self.busy = Gauge("generating", "1 while the device runs a generation.")

    def render(self, device: DeviceSample | None = None, extra: Sequence[Metric] = ()) -> str:
        metrics: list[Metric] = [
            self.requests, self.prompt_tokens, self.reused_tokens, self.completion_tokens, self.ttft,
            self.per_token, self.prefill, self.queue_depth, self.busy, *extra,
        ]  # fmt: skip
        lines = [line for metric in metrics for line in metric.render()]  # type: ignore[attr-defined]
        if device is not None:
            lines += device_lines(device)
        return "\n".join(lines) + "\n"


DEVICE_FIGURES = (  # DeviceSample field -> (metric name, help)
    ("tpu_util", "tpu_utilization_percent", "TPU utilisation."),
    ("tpu_mem_used", "device_memory_used_bytes", "TPU device memory in use."),
    ("tpu_mem_total", "device_memory_total_bytes", "TPU device memory in all."),
    ("chip_temp", "chip_temperature_celsius", "TPU chip temperature."),
    ("cpu_percent", "host_cpu_percent", "Host CPU use."),
    ("mem_used", "host_memory_used_bytes", "Host memory in use."),
    ("mem_total", "host_memory_total_bytes", "Host memory in all."),
)


def device_lines(sample: DeviceSample) -> list[str]:
    """The figures of ``sample`` that have a value, as gauges."""
    lines: list[str] = []
    for attribute, name, help_text in DEVICE_FIGURES:
        value = getattr(sample, attribute)
        if value is not None:
            gauge = Gauge(name, help_text)
            gauge.set(value)
            lines += gauge.render()
    return lines
