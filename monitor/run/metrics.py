"""Prometheus metrics in the text exposition format (version 0.0.4), without a client library.

A handful of counters, gauges and one histogram are all the daemon exposes; writing the format by hand
keeps the product free of another dependency. Tests parse the output with prometheus_client's parser.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

__all__ = ["Metrics", "Counter", "Gauge", "Histogram", "LATENCY_BUCKETS"]

LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0)


def _labels(names: tuple[str, ...], values: tuple[str, ...], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _escape(v: str) -> str:
    return str(v).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(v: float) -> str:
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v)) if not float(v).is_integer() else str(int(v)) if abs(v) < 1e15 else repr(float(v))


class Counter:
    """A monotonically increasing value per label set."""

    kind = "counter"

    def __init__(self, name: str, help: str, labels: tuple[str, ...] = ()):
        self.name, self.help, self.labels = name, help, labels
        self.values: dict[tuple[str, ...], float] = {}

    def inc(self, *labels: str, by: float = 1.0) -> None:
        self.values[labels] = self.values.get(labels, 0.0) + by

    def samples(self) -> Iterable[str]:
        for lv, v in sorted(self.values.items()):
            yield f"{self.name}_total{_labels(self.labels, lv)} {_num(v)}"


class Gauge(Counter):
    """A value that goes up and down, set per label set."""

    kind = "gauge"

    def set(self, *labels: str, value: float) -> None:
        self.values[labels] = float(value)

    def samples(self) -> Iterable[str]:
        for lv, v in sorted(self.values.items()):
            yield f"{self.name}{_labels(self.labels, lv)} {_num(v)}"


class Histogram:
    """Cumulative buckets, sum and count of observations."""

    kind = "histogram"

    def __init__(self, name: str, help: str, buckets: tuple[float, ...] = LATENCY_BUCKETS):
        self.name, self.help, self.buckets = name, help, buckets
        self.labels = ()
        self.counts = [0] * len(buckets)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.sum += value
        self.count += 1
        for i, b in enumerate(self.buckets):
            if value <= b:
                self.counts[i] += 1

    def samples(self) -> Iterable[str]:
        for b, c in zip(self.buckets, self.counts):
            yield f'{self.name}_bucket{{le="{_num(b)}"}} {c}'
        yield f'{self.name}_bucket{{le="+Inf"}} {self.count}'
        yield f"{self.name}_sum {_num(self.sum)}"
        yield f"{self.name}_count {self.count}"


class Metrics:
    """The daemon's metrics."""

    def __init__(self) -> None:
        p = "treasury_monitor"
        self.polls = Counter(f"{p}_polls", "Source polls completed.", ("source",))
        self.poll_errors = Counter(f"{p}_poll_errors", "Source polls that failed (or skipped keys).", ("source",))
        self.requests = Counter(f"{p}_source_requests", "HTTP/RPC requests made to sources.", ("source",))
        self.flows = Counter(f"{p}_flows", "Entity flows stored.", ("direction",))
        self.classifications = Counter(f"{p}_classifications", "Classifications stored (new or changed).", ("verdict",))
        self.retractions = Counter(f"{p}_retractions", "Classifications retracted (replaced or orphaned txs).")
        self.alerts = Gauge(f"{p}_alerts", "Alerts in storage by status.", ("status",))
        self.deliveries = Counter(f"{p}_deliveries", "Alert delivery attempts by outcome.", ("outcome",))
        self.latency = Histogram(f"{p}_delivery_latency_seconds", "Seconds from an alert being queued to its delivery.")
        self.tip_height = Gauge(f"{p}_tip_height", "Latest chain tip height a source reported.", ("source",))
        self.tip_lag = Gauge(
            f"{p}_tip_lag_blocks", "Blocks a source is behind the best tip any source of its chain reported.", ("source",)
        )
        self.last_success_age = Gauge(
            f"{p}_source_last_success_age_seconds", "Seconds since a source last polled successfully.", ("source",)
        )
        self.up = Gauge(f"{p}_source_up", "1 when a source's last poll succeeded.", ("source",))

    def all(self) -> list:
        return [v for v in vars(self).values() if hasattr(v, "samples")]

    def render(self) -> str:
        """The exposition text."""
        out: list[str] = []
        for m in self.all():
            # In the 0.0.4 text format a counter's HELP/TYPE name is its sample name, with `_total`.
            name = f"{m.name}_total" if m.kind == "counter" else m.name
            out.append(f"# HELP {name} {m.help}")
            out.append(f"# TYPE {name} {m.kind}")
            out.extend(m.samples())
        return "\n".join(out) + "\n"
