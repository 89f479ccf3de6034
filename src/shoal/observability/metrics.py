"""All metrics of one process, and the one facade the rest of shoal calls.

Two kinds of families, both produced by ``prometheus_client`` collectors:

- the reference system's ``DADIP2P_*`` set, kept byte for byte (``reference.py``), with
  millisecond timestamps because the reference has them. Scrape with
  ``honorTimestamps: false`` so Prometheus ignores them and keeps its staleness marks;
- shoal's own ``shoal_*`` families in Prometheus' conventions (``collectors.py``), plus
  ``prometheus_client``'s ``process_*`` and ``python_*`` families.

Call sites stay small and cheap: ``record``/``add_bytes`` touch a few numbers of one
``Meter``; nothing is formatted until a scrape asks for it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client.exposition import generate_latest
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import CollectorRegistry

from shoal.observability.collectors import (
    BLOB_BYTES,
    BLOB_BYTES_HELP,
    BLOB_FIRST_BYTE,
    BLOB_PULL,
    HISTOGRAMS,
    Histogram,
    ShoalCollector,
)
from shoal.observability.meter import DEFAULT_WINDOW_S, Meter, MetricType
from shoal.observability.reference import ReferenceCollector, render_reference

__all__ = ["Meter", "MetricType", "Metrics"]

Labels = tuple[tuple[str, str], ...]


class Metrics:
    """The metrics of one agent, root or webhook; ``render()`` gives ``/metrics``.

    ``reference=False`` (the webhook) leaves out the ``DADIP2P_*`` families and the
    traffic counters, which describe a P2P service.
    """

    def __init__(
        self,
        node: str,
        mode: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        window_s: float = DEFAULT_WINDOW_S,
        reference: bool = True,
        process: bool = True,
    ) -> None:
        self.node = node
        self.mode = mode
        self.wall = wall
        self.reference = reference
        self.meters = {t: Meter(clock, window_s) for t in MetricType}
        self._cache_source: Callable[[], tuple[int, int]] | None = None
        #: shoal's own counters and gauges: name -> (help, type, {labels: value})
        self.extra: dict[str, tuple[str, str, dict[Labels, float]]] = {}
        self.histograms = {name: Histogram(spec) for name, spec in HISTOGRAMS.items()}
        self.reference_registry = CollectorRegistry(auto_describe=False)
        if reference:
            self.reference_registry.register(ReferenceCollector(self))
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(ShoalCollector(self))
        if process:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            GCCollector(registry=self.registry)

    # --- the reference meters ------------------------------------------------------

    def record(self, kind: MetricType, nbytes: int, latency_s: float) -> None:
        self.meters[kind].record(nbytes, latency_s)

    def add_bytes(self, kind: MetricType, nbytes: int) -> None:
        self.meters[kind].add_bytes(nbytes)

    def set_cache_source(self, source: Callable[[], tuple[int, int]]) -> None:
        """``source()`` returns (allocated, used) bytes of the piece store."""
        self._cache_source = source

    @property
    def has_cache(self) -> bool:
        return self._cache_source is not None

    def cache_usage(self) -> tuple[int, int]:
        return self._cache_source() if self._cache_source is not None else (0, 0)

    # --- shoal's own families ------------------------------------------------------

    def inc(self, name: str, help_text: str, amount: float = 1.0, **labels: str) -> None:
        """Add to one of shoal's own counters; its name must end in ``_total``."""
        if not name.endswith("_total"):
            raise ValueError(f"counter {name!r} must end in _total")
        _, _, series = self.extra.setdefault(name, (help_text, "counter", {}))
        key = tuple(sorted(labels.items()))
        series[key] = series.get(key, 0.0) + amount

    def set_gauge(self, name: str, help_text: str, value: float, **labels: str) -> None:
        _, _, series = self.extra.setdefault(name, (help_text, "gauge", {}))
        series[tuple(sorted(labels.items()))] = value

    def value(self, name: str, **labels: str) -> float:
        entry = self.extra.get(name)
        if entry is None:
            return 0.0
        return entry[2].get(tuple(sorted(labels.items())), 0.0)

    def observe(self, name: str, seconds: float, **labels: str) -> None:
        """One observation of a histogram declared in ``collectors.HISTOGRAMS``."""
        hist = self.histograms[name]
        hist.observe(seconds, tuple(labels[k] for k in hist.spec.labels))

    def observed(self, name: str, **labels: str) -> int:
        """How many observations a histogram series holds (for tests and ``repr``)."""
        hist = self.histograms[name]
        return hist.count(tuple(labels[k] for k in hist.spec.labels))

    def blob_served(
        self, source: str, nbytes: int, seconds: float, first_byte_s: float | None
    ) -> None:
        """The mirror sent a whole blob (or a range of it) to its client."""
        self.inc(BLOB_BYTES, BLOB_BYTES_HELP, float(max(nbytes, 0)), source=source)
        self.observe(BLOB_PULL, seconds, source=source)
        if first_byte_s is not None:
            self.observe(BLOB_FIRST_BYTE, first_byte_s, source=source)

    # --- exposition ----------------------------------------------------------------

    def render(self) -> str:
        """The ``/metrics`` body: the reference families first, in their own format."""
        head = render_reference(self.reference_registry.collect())
        return head + generate_latest(self.registry).decode()

    def __repr__(self) -> str:
        counts = " ".join(f"{k.value}={m.count}" for k, m in self.meters.items())
        return f"<Metrics node={self.node} mode={self.mode} {counts}>"
