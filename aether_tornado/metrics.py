"""Prometheus metrics in the text exposition format, kept cheap enough for the hot path.

Counters are plain dict increments; gauges are read when scraped. Written here rather
than with prometheus_client: the server needs four metric shapes and no global registry.
"""

import bisect
import collections
import time
from collections.abc import Callable
from typing import Any

# What a process keeps of its recent rates for the operator's chart: 10 minutes, a sample each 10 s.
RECENT_SECONDS = 600
RECENT_STEP = 10


def _labels(names: tuple[str, ...], values: tuple[str, ...]) -> str:
    if not names:
        return ""
    return "{" + ",".join(f'{name}="{value}"' for name, value in zip(names, values, strict=True)) + "}"


class Counter:
    def __init__(self, name: str, help: str, labels: tuple[str, ...] = ()) -> None:
        self.name, self.help, self.label_names = name, help, labels
        self.values: dict[tuple[str, ...], float] = {}

    def inc(self, *labels: str, amount: float = 1) -> None:
        self.values[labels] = self.values.get(labels, 0) + amount

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        lines += [
            f"{self.name}{_labels(self.label_names, key)} {value:g}" for key, value in sorted(self.values.items())
        ]
        return lines


class Gauge:
    def __init__(self, name: str, help: str, read: Callable[[], float]) -> None:
        self.name, self.help, self.read = name, help, read

    def render(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} gauge", f"{self.name} {self.read():g}"]


class Histogram:
    def __init__(self, name: str, help: str, buckets: tuple[float, ...]) -> None:
        self.name, self.help, self.buckets = name, help, buckets
        self.counts = [0] * (len(buckets) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        cumulative = 0
        for bound, count in zip((*self.buckets, float("inf")), self.counts, strict=True):
            cumulative += count
            le = "+Inf" if bound == float("inf") else f"{bound:g}"
            lines.append(f'{self.name}_bucket{{le="{le}"}} {cumulative}')
        lines += [f"{self.name}_sum {self.total:g}", f"{self.name}_count {cumulative}"]
        return lines


class Rates:
    """Per-second rates of some counters between two readings, for the operator's view."""

    def __init__(self, counters: dict[str, Counter], clock: Callable[[], float] = time.monotonic) -> None:
        self._counters, self._clock = counters, clock
        self._read_at, self._totals = clock(), self._count()
        self.per_second = dict.fromkeys(counters, 0.0)

    def read(self) -> dict[str, float]:
        """The rates since the last reading, which they replace."""
        now, totals = self._clock(), self._count()
        elapsed = now - self._read_at
        if elapsed > 0:
            self.per_second = {name: round((totals[name] - self._totals[name]) / elapsed, 1) for name in totals}
            self._read_at, self._totals = now, totals
        return self.per_second

    def _count(self) -> dict[str, float]:
        return {name: sum(counter.values.values()) for name, counter in self._counters.items()}


class Recent:
    """The last RECENT_SECONDS of a process's connections and rates, one sample every
    RECENT_STEP seconds, oldest first: what the operator's chart shows when it opens."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._taken_at: float | None = None
        self._samples: collections.deque[tuple[int, dict[str, float]]] = collections.deque(
            maxlen=int(RECENT_SECONDS / RECENT_STEP)
        )

    def add(self, connections: int, per_second: dict[str, float]) -> None:
        """Keep this reading, if a step has passed since the last one kept."""
        now = self._clock()
        if self._taken_at is not None and now - self._taken_at < RECENT_STEP:
            return
        self._taken_at = now
        self._samples.append((connections, per_second))

    def as_dict(self) -> dict[str, Any]:
        names = self._samples[-1][1].keys() if self._samples else ()
        return {
            "every_seconds": RECENT_STEP,
            "connections": [connections for connections, _ in self._samples],
            **{name: [rates.get(name, 0.0) for _, rates in self._samples] for name in names},
        }


class Metrics:
    """Every metric the server exports; the gauges read the node's state when scraped."""

    def __init__(
        self,
        connections: Callable[[], float],
        bridge_up: Callable[[], float],
        bridge_backlog: Callable[[], float],
        presence_backlog: Callable[[], float],
    ) -> None:
        self.messages_in = Counter(
            "aether_messages_in_total", "Messages accepted from clients and backends.", ("msg_type", "target")
        )
        self.messages_out = Counter(
            "aether_messages_out_total", "Messages routed to receivers, once per message.", ("msg_type", "target")
        )
        self.deliveries = Counter("aether_deliveries_total", "Frames handed to client sockets.")
        self.errors = Counter("aether_errors_total", "Errors answered to clients, and refused handshakes.", ("code",))
        self.recoveries = Counter(
            "aether_recoveries_total",
            "Connections that asked to recover, by outcome: recovered, or not_recovered.",
            ("outcome",),
        )
        self.bridge_latency = Histogram(
            "aether_bridge_delivery_seconds",
            "From publish on one process to delivery on another (wall clocks of both).",
            (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
        )
        self.rates = Rates(
            {
                "messages_in": self.messages_in,
                "messages_out": self.messages_out,
                "deliveries": self.deliveries,
                "errors": self.errors,
            }
        )
        self._all: list[Counter | Gauge | Histogram] = [
            Gauge("aether_connections", "Open WebSocket connections on this process.", connections),
            Gauge("aether_bridge_up", "1 while other processes can be reached (always 1 alone).", bridge_up),
            Gauge("aether_bridge_backlog_bytes", "Bytes of publishes waiting for Redis to take them.", bridge_backlog),
            Gauge(
                "aether_presence_backlog_leases",
                "Leases that ended while Redis was away, to drop there when it is back.",
                presence_backlog,
            ),
            self.messages_in,
            self.messages_out,
            self.deliveries,
            self.errors,
            self.recoveries,
            self.bridge_latency,
        ]

    def render(self) -> str:
        return "\n".join(line for metric in self._all for line in metric.render()) + "\n"
