"""The ``DADIP2P_*`` families, byte for byte in the reference system's exposition format.

Users migrate dashboards, alerts and scripts from the reference system, so these
families keep its names, its label order (``node``, ``type``, ``mode``), its six-decimal
values and its millisecond timestamps::

    # HELP DADIP2P_Alive
    # TYPE DADIP2P_Alive gauge
    DADIP2P_Alive{node="192.168.69.172:65005",mode="agent"} 1.000000 1692156721833

The families come from a ``prometheus_client`` collector (``ReferenceCollector``) like
every other family; only the last step, turning them into text, is done here, because
``prometheus_client``'s writer sorts labels, prints ``1.0`` for ``1.000000`` and adds a
space after an empty ``HELP``. Everything of shoal's own (``shoal_*``, ``process_*``)
goes through ``prometheus_client``'s writer unchanged (see ``collectors.py``).

The reference types ``DADIP2P_Count`` as a gauge although it only grows; it stays so
here for compatibility, and ``shoal_traffic_bytes_total`` carries the same figure as a
counter.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from shoal.observability.meter import Meter

if TYPE_CHECKING:
    from shoal.observability.metrics import Metrics

#: (name, HELP text, value of one type's meter); order and texts are the reference's
PER_TYPE_FAMILIES: tuple[tuple[str, str, Callable[[Meter], float]], ...] = (
    ("DADIP2P_Read_Throughtput", "Bytes / sec", Meter.throughput),
    ("DADIP2P_QPS", "", Meter.qps),
    ("DADIP2P_MaxLatency", "us", Meter.max_latency_us),
    ("DADIP2P_Count", "Bytes", lambda meter: float(meter.count)),
)


class ReferenceCollector(Collector):
    """Yields the seven reference families with one timestamp (the scrape's wall time)."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m = self._metrics
        stamp = round(m.wall() * 1000) / 1000  # milliseconds, as the reference writes
        node, mode = m.node, m.mode
        alive = GaugeMetricFamily("DADIP2P_Alive", "", labels=["node", "mode"])
        alive.add_metric([node, mode], 1.0, timestamp=stamp)
        yield alive
        for name, help_text, value in PER_TYPE_FAMILIES:
            family = GaugeMetricFamily(name, help_text, labels=["node", "type", "mode"])
            for kind, meter in m.meters.items():
                family.add_metric([node, kind.value, mode], value(meter), timestamp=stamp)
            yield family
        allocated, used = m.cache_usage()
        cache = GaugeMetricFamily("DADIP2P_Cache", "", labels=["node", "type", "mode"])
        cache.add_metric([node, "allocated", mode], float(allocated), timestamp=stamp)
        cache.add_metric([node, "used", mode], float(used), timestamp=stamp)
        yield cache
        yield GaugeMetricFamily("DADIP2P_Label", "", labels=["node", "mode"])


def render_reference(families: Iterable[Metric]) -> str:
    """The families in the reference's text form: a blank line after each family."""
    out: list[str] = []
    for family in families:
        out.append(
            f"# HELP {family.name}{' ' + family.documentation if family.documentation else ''}"
        )
        out.append(f"# TYPE {family.name} {family.type}")
        for sample in family.samples:
            labels = ",".join(f'{k}="{escape_label(v)}"' for k, v in sample.labels.items())
            stamp = "" if sample.timestamp is None else f" {round(float(sample.timestamp) * 1000)}"
            out.append(f"{sample.name}{{{labels}}} {sample.value:f}{stamp}")
        out.append("")
    return "\n".join(out) + "\n" if out else ""


def escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
