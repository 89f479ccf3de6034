"""shoal's own families, in Prometheus' conventions, through ``prometheus_client``.

Beyond the reference set (``reference.py``), every family is named ``shoal_*`` with its
unit in the name, counters end in ``_total``, and no sample carries a timestamp, so
Prometheus' staleness handling marks a dead process's series stale at once. Each sample
carries the process's ``node`` and ``mode`` labels, as the reference families do, so one
dashboard variable selects both.

Histograms are fixed-bucket, declared here with their buckets (``HISTOGRAMS``): a call
site names the family and its labels, never its buckets, so every process of a cluster
exports the same ``le`` boundaries and ``histogram_quantile`` can sum them.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from shoal import __version__

if TYPE_CHECKING:
    from shoal.observability.metrics import Metrics

#: the mirror: request to last byte of a blob sent to the runtime, by ``source``
BLOB_PULL = "shoal_blob_pull_duration_seconds"
#: the mirror: request to the response's headers (the first byte the runtime sees)
BLOB_FIRST_BYTE = "shoal_blob_first_byte_seconds"
#: the agent's download: one piece asked of a parent until it is verified
PIECE_FETCH = "shoal_piece_fetch_duration_seconds"
#: the agent's preheat: one blob of a job, access check to the whole blob stored
PREHEAT_BLOB = "shoal_preheat_blob_duration_seconds"
#: the webhook: one AdmissionReview, body read to answer written
ADMISSION = "shoal_webhook_admission_duration_seconds"

#: the mirror: blob body bytes sent to the runtime, by where the blob came from
BLOB_BYTES = "shoal_blob_bytes_total"
BLOB_BYTES_HELP = (
    "Blob bytes the mirror sent to its clients, by source: store (already on this node), "
    "p2p (fetched through the swarm), origin (fetched from the registry by this node)"
)
#: values of the ``source`` label of the blob families
SOURCES = ("store", "p2p", "origin")


@dataclass(frozen=True, slots=True)
class HistogramSpec:
    name: str
    help: str
    labels: tuple[str, ...]
    #: upper bounds in seconds, ascending; ``+Inf`` is implied
    buckets: tuple[float, ...]


HISTOGRAMS = {
    spec.name: spec
    for spec in (
        HistogramSpec(
            BLOB_PULL,
            "Time from a blob request to its last byte sent, by where the blob came from",
            ("source",),
            (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
        ),
        HistogramSpec(
            BLOB_FIRST_BYTE,
            "Time from a blob request to its response headers, by where the blob came from",
            ("source",),
            (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        ),
        HistogramSpec(
            PIECE_FETCH,
            "Time from asking a parent for a piece to the piece verified, by the parent's role",
            ("source",),
            (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        ),
        HistogramSpec(
            PREHEAT_BLOB,
            "Time to put one blob of a preheat job in this node's store, by result "
            "(fetched, present, failed)",
            ("result",),
            (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800),
        ),
        HistogramSpec(
            ADMISSION,
            "Time to answer one AdmissionReview, by what selected the Pod",
            ("trigger",),
            (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        ),
    )
}


class Histogram:
    """Bucket counts (not cumulative; the last one is ``+Inf``), sum and count per
    label values."""

    __slots__ = ("series", "spec")

    def __init__(self, spec: HistogramSpec) -> None:
        self.spec = spec
        self.series: dict[tuple[str, ...], tuple[list[int], list[float]]] = {}

    def observe(self, value: float, key: tuple[str, ...]) -> None:
        entry = self.series.get(key)
        if entry is None:
            entry = self.series[key] = ([0] * (len(self.spec.buckets) + 1), [0.0])
        counts, total = entry
        counts[bisect.bisect_left(self.spec.buckets, value)] += 1
        total[0] += value

    def count(self, key: tuple[str, ...]) -> int:
        entry = self.series.get(key)
        return sum(entry[0]) if entry else 0

    def family(self, node: str, mode: str) -> HistogramMetricFamily:
        fam = HistogramMetricFamily(
            self.spec.name, self.spec.help, labels=[*self.spec.labels, "node", "mode"]
        )
        bounds = [_bound(b) for b in self.spec.buckets] + ["+Inf"]
        for key, (counts, total) in sorted(self.series.items()):
            cumulative, buckets = 0, []
            for bound, n in zip(bounds, counts, strict=True):
                cumulative += n
                buckets.append((bound, float(cumulative)))
            fam.add_metric([*key, node, mode], buckets, total[0])
        return fam

    def __repr__(self) -> str:
        n = sum(sum(counts) for counts, _ in self.series.values())
        return f"<Histogram {self.spec.name} series={len(self.series)} observations={n}>"


def _bound(value: float) -> str:
    return repr(float(value))


class ShoalCollector(Collector):
    """Everything of shoal's own that one ``Metrics`` holds, read at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m = self._metrics
        base = {"node": m.node, "mode": m.mode}
        info = GaugeMetricFamily(
            "shoal_build_info", "Always 1; the labels say which shoal runs", labels=[]
        )
        info.add_sample("shoal_build_info", {"version": __version__, **base}, 1.0)
        yield info
        if m.reference:
            traffic = CounterMetricFamily(
                "shoal_traffic_bytes",
                "Bytes processed, by type (the figure of DADIP2P_Count, as a counter)",
                labels=["type", "node", "mode"],
            )
            requests = CounterMetricFamily(
                "shoal_requests",
                "Requests and operations processed, by type (what DADIP2P_QPS is a rate of)",
                labels=["type", "node", "mode"],
            )
            for kind, meter in m.meters.items():
                traffic.add_metric([kind.value, m.node, m.mode], float(meter.count))
                requests.add_metric([kind.value, m.node, m.mode], float(meter.requests))
            yield traffic
            yield requests
        if m.has_cache:
            allocated, used = m.cache_usage()
            capacity = GaugeMetricFamily(
                "shoal_cache_capacity_bytes", "Bytes the piece store may hold", labels=[]
            )
            capacity.add_sample("shoal_cache_capacity_bytes", base, float(allocated))
            yield capacity
            held = GaugeMetricFamily(
                "shoal_cache_used_bytes", "Bytes the piece store holds now", labels=[]
            )
            held.add_sample("shoal_cache_used_bytes", base, float(used))
            yield held
        for name, (help_text, family_type, series) in sorted(m.extra.items()):
            family = Metric(name.removesuffix("_total"), help_text, family_type)
            for key, value in sorted(series.items()):
                family.add_sample(name, {**dict(key), **base}, value)
            yield family
        for hist in m.histograms.values():
            if hist.series:
                yield hist.family(m.node, m.mode)
