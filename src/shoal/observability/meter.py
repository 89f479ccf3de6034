"""Bytes, requests and the worst latency of one traffic type, over a sliding window.

The reference system exports rates (``DADIP2P_Read_Throughtput``, ``DADIP2P_QPS``) and a
maximum (``DADIP2P_MaxLatency``) rather than counters, so the exporter has to choose the
span they cover. It is ``ExporterConfig.rateWindow`` (default 30 s, the chart's scrape
interval): each request then falls in the window of exactly one scrape of each scraper,
where a window shorter than the interval would hide what happened between two scrapes.
Counters (``count``, ``requests``) are kept as well, for the ``shoal_*_total`` families
on which Prometheus' own ``rate()`` works over any range.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from enum import StrEnum


class MetricType(StrEnum):
    """The ``type`` label of the reference families."""

    PREAD = "pread"  # downstream requests answered (the mirror's clients)
    DOWNLOAD = "download"  # back-to-origin fetches
    PEER = "peer"  # pieces served to or fetched from other peers
    DISK = "disk"  # piece store reads and writes
    HTTP = "http"  # HTTP requests processed by the proxy


#: seconds, when no window is configured
DEFAULT_WINDOW_S = 30.0


class Meter:
    """One ``type``: one-second buckets of (bytes, requests, max latency), newest last."""

    __slots__ = ("_buckets", "_clock", "_started", "count", "requests", "window_s")

    def __init__(self, clock: Callable[[], float], window_s: float = DEFAULT_WINDOW_S) -> None:
        self._clock = clock
        self._started = clock()
        self.window_s = window_s
        # [second, bytes, requests, max latency in µs]
        self._buckets: deque[list[float]] = deque()
        self.count = 0
        self.requests = 0

    def _bucket(self) -> list[float]:
        now = self._clock()
        second = math.floor(now)
        if not self._buckets or self._buckets[-1][0] != second:
            self._buckets.append([second, 0.0, 0.0, 0.0])
            self._expire(now)
        return self._buckets[-1]

    def record(self, nbytes: int, latency_s: float) -> None:
        """One request (or operation) that moved ``nbytes`` and took ``latency_s``."""
        bucket = self._bucket()
        nbytes = max(nbytes, 0)
        bucket[1] += nbytes
        bucket[2] += 1
        bucket[3] = max(bucket[3], latency_s * 1e6)
        self.count += nbytes
        self.requests += 1

    def add_bytes(self, nbytes: int) -> None:
        """Bytes that belong to a request already counted (a long body, streamed)."""
        self._bucket()[1] += nbytes
        self.count += nbytes

    def _expire(self, now: float) -> None:
        horizon = math.floor(now) - self.window_s
        while self._buckets and self._buckets[0][0] <= horizon:
            self._buckets.popleft()

    def _span(self, now: float) -> float:
        return max(min(self.window_s, now - self._started), 1.0)

    def throughput(self) -> float:
        """Bytes per second over the window (over the uptime while it is shorter)."""
        now = self._clock()
        self._expire(now)
        return sum(b[1] for b in self._buckets) / self._span(now)

    def qps(self) -> float:
        now = self._clock()
        self._expire(now)
        return sum(b[2] for b in self._buckets) / self._span(now)

    def max_latency_us(self) -> float:
        self._expire(self._clock())
        return max((b[3] for b in self._buckets), default=0.0)

    def __repr__(self) -> str:
        return f"<Meter count={self.count} requests={self.requests} window={self.window_s:g}s>"
