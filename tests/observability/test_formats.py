from __future__ import annotations

import io
import re

import pytest
from prometheus_client.parser import text_string_to_metric_families

from shoal.observability import AuditLog, Metrics, MetricType
from shoal.observability.audit import HTTP_PREAD

REFERENCE_FAMILIES = {
    "DADIP2P_Alive",
    "DADIP2P_Read_Throughtput",
    "DADIP2P_QPS",
    "DADIP2P_MaxLatency",
    "DADIP2P_Count",
    "DADIP2P_Cache",
    "DADIP2P_Label",
}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_exposition_matches_the_reference_format() -> None:
    clock = Clock()
    m = Metrics("192.168.69.172:65005", "agent", clock=clock, wall=lambda: 1692156721.833)
    m.set_cache_source(lambda: (4294967296, 2147487744))
    m.record(MetricType.HTTP, 4096, 0.002)
    text = m.render()
    assert 'DADIP2P_Alive{node="192.168.69.172:65005",mode="agent"} 1.000000 1692156721833' in text
    assert (
        'DADIP2P_Cache{node="192.168.69.172:65005",type="allocated",mode="agent"} '
        "4294967296.000000 1692156721833"
    ) in text
    assert "# HELP DADIP2P_Read_Throughtput Bytes / sec" in text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert set(families) >= REFERENCE_FAMILIES
    types = {s.labels["type"] for s in families["DADIP2P_Count"].samples}
    assert types == {"pread", "download", "peer", "disk", "http"}
    count = {s.labels["type"]: s.value for s in families["DADIP2P_Count"].samples}
    assert count["http"] == 4096
    latency = {s.labels["type"]: s.value for s in families["DADIP2P_MaxLatency"].samples}
    assert latency["http"] == pytest.approx(2000)


def test_rates_cover_a_sliding_window() -> None:
    clock = Clock()
    m = Metrics("n:1", "agent", clock=clock)
    clock.now += 20  # long uptime: the window, not the uptime, divides
    for i in range(10):
        if i:
            clock.now += 1
        m.record(MetricType.PREAD, 1000, 0.001)
    clock.now += 0.5
    meter = m.meters[MetricType.PREAD]
    assert meter.throughput() == pytest.approx(1000.0)
    assert meter.qps() == pytest.approx(1.0)
    clock.now += 30
    assert meter.throughput() == 0
    assert meter.max_latency_us() == 0
    assert meter.count == 10_000


def test_own_counters_render_after_the_reference_set() -> None:
    m = Metrics("n:1", "agent")
    m.inc("shoal_origin_fallback_total", "Blobs fetched from the origin by the agent itself")
    m.inc("shoal_origin_fallback_total", "Blobs fetched from the origin by the agent itself")
    assert m.value("shoal_origin_fallback_total") == 2
    fam = [f for f in text_string_to_metric_families(m.render()) if f.name.startswith("shoal_")]
    assert fam[0].samples[0].value == 2


AUDIT_RE = re.compile(
    r"^\d{4}/\d{2}/\d{2} \d{2}:\d{2}:\d{2}\|AUDIT\|th=[0-9A-F]{16}\|http:pread"
    r"\[pathname=/https://reg\.io/v2/a/blobs/sha256:x\]\[offset=128\]\[size=(-?\d+)\]"
    r"\[latency=(\d+)\]$"
)


def test_audit_line_has_the_reference_form() -> None:
    sink = io.StringIO()
    log = AuditLog(sink)
    with log.timed(HTTP_PREAD, "/https://reg.io/v2/a/blobs/sha256:x", 128) as rec:
        rec.size = 65536
    with (
        pytest.raises(ValueError, match="boom"),
        log.timed(HTTP_PREAD, "/https://reg.io/v2/a/blobs/sha256:x", 128),
    ):
        raise ValueError("boom")
    lines = sink.getvalue().splitlines()
    assert len(lines) == 2
    ok, failed = (AUDIT_RE.match(line) for line in lines)
    assert ok is not None
    assert ok.group(1) == "65536"
    assert failed is not None
    assert int(failed.group(1)) < 0


def test_disabled_audit_writes_nothing() -> None:
    log = AuditLog(None)
    assert not log.enabled
    log.record(HTTP_PREAD, "/x", 0, 1, 0.1)
