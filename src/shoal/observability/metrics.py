"""``DADIP2P_*`` metrics in the reference system's exposition format.

Users migrate dashboards and alerts from the reference system, so the families, labels
and number format are kept exactly: ``name{node="IP:port",type="...",mode="agent"}
1.000000 1692156721833`` with a millisecond timestamp. That format is valid Prometheus
text exposition, so the renderer here is small and hand-written rather than bent out of
``prometheus_client`` (which formats values and orders labels differently); the tests
parse its output with ``prometheus_client``'s parser to keep it honest.

Rates (``Read_Throughtput``, ``QPS``) and ``MaxLatency`` are computed over a sliding
window of one-second buckets; ``Count`` is cumulative bytes.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from enum import StrEnum


class MetricType(StrEnum):
    PREAD = "pread"  # downstream requests answered (the mirror's clients)
    DOWNLOAD = "download"  # back-to-origin fetches
    PEER = "peer"  # pieces served to or fetched from other peers
    DISK = "disk"  # piece store reads and writes
    HTTP = "http"  # HTTP requests processed by the proxy


WINDOW_SECONDS = 10


class Meter:
    """Bytes, requests and the worst latency of one ``type``, over a sliding window."""

    __slots__ = ("_buckets", "_clock", "_started", "count", "requests")

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._started = clock()
        # (second, bytes, requests, max latency in µs), newest last
        self._buckets: deque[list[float]] = deque()
        self.count = 0
        self.requests = 0

    def record(self, nbytes: int, latency_s: float) -> None:
        now = self._clock()
        second = math.floor(now)
        if not self._buckets or self._buckets[-1][0] != second:
            self._buckets.append([second, 0.0, 0.0, 0.0])
            self._expire(now)
        bucket = self._buckets[-1]
        nbytes = max(nbytes, 0)
        bucket[1] += nbytes
        bucket[2] += 1
        bucket[3] = max(bucket[3], latency_s * 1e6)
        self.count += nbytes
        self.requests += 1

    def add_bytes(self, nbytes: int) -> None:
        """Bytes that belong to a request already counted (a long body, streamed)."""
        now = self._clock()
        second = math.floor(now)
        if not self._buckets or self._buckets[-1][0] != second:
            self._buckets.append([second, 0.0, 0.0, 0.0])
            self._expire(now)
        self._buckets[-1][1] += nbytes
        self.count += nbytes

    def _expire(self, now: float) -> None:
        horizon = math.floor(now) - WINDOW_SECONDS
        while self._buckets and self._buckets[0][0] <= horizon:
            self._buckets.popleft()

    def _span(self, now: float) -> float:
        return max(min(float(WINDOW_SECONDS), now - self._started), 1.0)

    def throughput(self) -> float:
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
        return f"<Meter count={self.count} requests={self.requests}>"


class Metrics:
    """All metrics of one process; ``render()`` gives the ``/metrics`` body."""

    def __init__(
        self,
        node: str,
        mode: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.node = node
        self.mode = mode
        self._wall = wall
        self.meters = {t: Meter(clock) for t in MetricType}
        self._cache_source: Callable[[], tuple[int, int]] = lambda: (0, 0)
        # shoal's own families beyond the reference set: name -> (help, {labels: value})
        self._extra: dict[str, tuple[str, str, dict[tuple[tuple[str, str], ...], float]]] = {}

    def record(self, kind: MetricType, nbytes: int, latency_s: float) -> None:
        self.meters[kind].record(nbytes, latency_s)

    def add_bytes(self, kind: MetricType, nbytes: int) -> None:
        self.meters[kind].add_bytes(nbytes)

    def set_cache_source(self, source: Callable[[], tuple[int, int]]) -> None:
        """``source()`` returns (allocated, used) bytes of the piece store."""
        self._cache_source = source

    def inc(self, name: str, help_text: str, amount: float = 1.0, **labels: str) -> None:
        """Add to one of shoal's own counters (``shoal_*``), beyond the reference set."""
        _, _, series = self._extra.setdefault(name, (help_text, "counter", {}))
        key = tuple(sorted(labels.items()))
        series[key] = series.get(key, 0.0) + amount

    def set_gauge(self, name: str, help_text: str, value: float, **labels: str) -> None:
        _, _, series = self._extra.setdefault(name, (help_text, "gauge", {}))
        series[tuple(sorted(labels.items()))] = value

    def value(self, name: str, **labels: str) -> float:
        entry = self._extra.get(name)
        if entry is None:
            return 0.0
        return entry[2].get(tuple(sorted(labels.items())), 0.0)

    def render(self) -> str:
        ts = int(self._wall() * 1000)
        base = f'node="{_esc(self.node)}"'
        mode = f'mode="{_esc(self.mode)}"'
        out: list[str] = []

        def family(name: str, help_text: str) -> None:
            out.append(f"# HELP {name}{(' ' + help_text) if help_text else ''}")
            out.append(f"# TYPE {name} gauge")

        family("DADIP2P_Alive", "")
        out.append(f"DADIP2P_Alive{{{base},{mode}}} {1.0:f} {ts}")
        out.append("")
        per_type: list[tuple[str, str, Callable[[Meter], float]]] = [
            ("DADIP2P_Read_Throughtput", "Bytes / sec", Meter.throughput),
            ("DADIP2P_QPS", "", Meter.qps),
            ("DADIP2P_MaxLatency", "us", Meter.max_latency_us),
            ("DADIP2P_Count", "Bytes", lambda m: float(m.count)),
        ]
        for name, help_text, fn in per_type:
            family(name, help_text)
            for kind, meter in self.meters.items():
                out.append(f'{name}{{{base},type="{kind.value}",{mode}}} {fn(meter):f} {ts}')
            out.append("")
        allocated, used = self._cache_source()
        family("DADIP2P_Cache", "")
        out.append(f'DADIP2P_Cache{{{base},type="allocated",{mode}}} {float(allocated):f} {ts}')
        out.append(f'DADIP2P_Cache{{{base},type="used",{mode}}} {float(used):f} {ts}')
        out.append("")
        family("DADIP2P_Label", "")
        out.append("")
        for name, (help_text, kind_name, series) in sorted(self._extra.items()):
            out.append(f"# HELP {name} {help_text}")
            out.append(f"# TYPE {name} {kind_name}")
            for key, value in sorted(series.items()):
                labels = ",".join([base, *(f'{k}="{_esc(v)}"' for k, v in key), mode])
                out.append(f"{name}{{{labels}}} {value:f} {ts}")
            out.append("")
        return "\n".join(out) + "\n"

    def __repr__(self) -> str:
        counts = " ".join(f"{k.value}={m.count}" for k, m in self.meters.items())
        return f"<Metrics node={self.node} mode={self.mode} {counts}>"


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
