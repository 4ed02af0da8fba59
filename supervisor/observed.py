"""What the supervisor observes of its runtimes for /metrics, kept in plain Python so that a
start never imports prometheus-client (metrics.py turns these into families at a scrape)."""

from __future__ import annotations

import threading
from dataclasses import dataclass


@dataclass(frozen=True)
class RuntimeView:
    """One runtime as the collector sees it, taken under the supervisor's lock."""

    name: str
    backend: str
    variant: str
    state: str
    restarts: int
    ready_after_s: float | None
    uptime_s: float
    pid: int | None
    devices: tuple[str, ...]
    roles: tuple[str, ...]
    models: tuple[str, ...]
    metrics_url: str
    metrics_token: str


PROBE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class ProbeLatency:
    """Liveness probe latencies per runtime as histogram counts (what /metrics reports), kept
    without prometheus-client so a supervisor's start never pays for importing it."""

    def __init__(self, buckets: tuple[float, ...] = PROBE_BUCKETS):
        self.buckets = buckets
        self._lock = threading.Lock()
        self._data: dict[str, tuple[list[int], float]] = {}  # runtime -> (count per bucket, +Inf last; sum)

    def observe(self, runtime: str, seconds: float) -> None:
        with self._lock:
            counts, total = self._data.get(runtime) or ([0] * (len(self.buckets) + 1), 0.0)
            index = next((i for i, bound in enumerate(self.buckets) if seconds <= bound), len(self.buckets))
            counts[index] += 1
            self._data[runtime] = (counts, total + seconds)

    def snapshot(self) -> dict[str, tuple[list[tuple[str, int]], float]]:
        """runtime -> ([(upper bound, cumulative count), ..., ("+Inf", count)], sum of seconds)."""
        with self._lock:
            out = {}
            for runtime, (counts, total) in self._data.items():
                cumulative, running = [], 0
                for bound, n in zip([*map(str, self.buckets), "+Inf"], counts):
                    running += n
                    cumulative.append((bound, running))
                out[runtime] = (cumulative, total)
            return out
