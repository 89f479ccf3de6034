"""The ``/metrics`` body: the reference families byte for byte, shoal's own by the rules.

``reference_example.prom`` is the example exposition of the reference document
(``ack-p2p-acceleration.txt``, "Example output"), copied verbatim.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from shoal.lifecycle import serve_app
from shoal.observability import Metrics, MetricType
from shoal.observability.collectors import BLOB_PULL, PIECE_FETCH
from shoal.observability.exporter import CONTENT_TYPE, exporter_app

EXAMPLE = (Path(__file__).parent / "reference_example.prom").read_text()

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


def example_metrics(clock: Clock | None = None) -> Metrics:
    """The state of the reference's example: an idle agent with a full 4 GiB cache."""
    m = Metrics(
        "192.168.69.172:65005", "agent", clock=clock or Clock(), wall=lambda: 1692156721.833
    )
    m.set_cache_source(lambda: (4294967296, 4294971392))
    return m


def busy_metrics() -> Metrics:
    """Every kind of family shoal has, with a sample in each."""
    m = example_metrics()
    m.record(MetricType.HTTP, 4096, 0.002)
    m.inc("shoal_origin_fallback_total", "Blobs fetched from the origin by the agent itself")
    m.set_gauge("shoal_swarms", "Swarms this agent is in", 3)
    m.blob_served("store", 1 << 20, 0.3, 0.004)
    m.blob_served("p2p", 1 << 22, 2.0, 0.2)
    m.observe(PIECE_FETCH, 0.02, source="peer")
    return m


def test_reference_families_are_byte_compatible_with_the_reference_example() -> None:
    text = example_metrics().render()
    assert text.startswith(EXAMPLE)
    # the reference's blank line after its last family, then shoal's own families
    assert text[len(EXAMPLE) :].startswith("\n# HELP shoal_")


def test_every_family_parses_and_only_the_reference_ones_carry_timestamps() -> None:
    text = busy_metrics().render()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert set(families) >= REFERENCE_FAMILIES
    assert families["shoal_traffic_bytes"].type == "counter"
    assert families[BLOB_PULL].type == "histogram"
    assert "process_cpu_seconds" in families and "process_resident_memory_bytes" in families
    for fam in families.values():
        for s in fam.samples:
            if fam.name.startswith("DADIP2P_"):
                assert s.timestamp is not None and s.labels["node"] == "192.168.69.172:65005"
            else:
                assert s.timestamp is None, f"{s.name} has a timestamp"
    count = {s.labels["type"]: s.value for s in families["DADIP2P_Count"].samples}
    assert count == {"pread": 0, "download": 0, "peer": 0, "disk": 0, "http": 4096}
    traffic = {s.labels["type"]: s.value for s in families["shoal_traffic_bytes"].samples}
    assert traffic == count  # the same figure, typed as what it is
    latency = {s.labels["type"]: s.value for s in families["DADIP2P_MaxLatency"].samples}
    assert latency["http"] == pytest.approx(2000)
    by_source = {s.labels["source"]: s.value for s in families["shoal_blob_bytes"].samples}
    assert by_source == {"store": 1 << 20, "p2p": 1 << 22}


def promtool(text: str) -> list[str]:
    """``promtool check metrics`` on ``text``: its lint lines (empty when clean)."""
    if shutil.which("promtool") is None:
        pytest.skip("needs promtool (make install: scripts/install-promtool.sh)")
    done = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert done.returncode == 0 or lines, "promtool failed without saying why"
    return lines


def test_promtool_finds_nothing_to_say_about_shoals_own_families() -> None:
    text = busy_metrics().render()
    own = text[text.index("# HELP shoal_") :]
    assert promtool(own) == []
    # the whole body: what promtool says is only about the reference's own names
    for line in promtool(text):
        assert line.startswith("DADIP2P_"), line


def test_rates_cover_the_configured_window_and_counters_all_time() -> None:
    clock = Clock()
    m = Metrics("n:1", "agent", clock=clock, window_s=30)
    clock.now += 100  # long uptime: the window, not the uptime, divides
    for _ in range(30):
        m.record(MetricType.PREAD, 1000, 0.001)
        clock.now += 1
    m.record(MetricType.PREAD, 1000, 0.5)  # the slow one, just now
    meter = m.meters[MetricType.PREAD]
    # a 30 s scrape interval sees every request exactly once
    assert meter.throughput() == pytest.approx(1000.0, rel=0.05)
    assert meter.qps() == pytest.approx(1.0, rel=0.05)
    assert meter.max_latency_us() == pytest.approx(500_000)
    clock.now += 31
    assert meter.throughput() == 0
    assert meter.max_latency_us() == 0
    assert meter.count == 31_000
    assert meter.requests == 31


def test_histogram_buckets_are_cumulative_and_end_at_the_count() -> None:
    m = Metrics("n:1", "agent", process=False)
    for seconds in (0.01, 0.2, 0.2, 7.0, 4000.0):
        m.observe(BLOB_PULL, seconds, source="p2p")
    assert m.observed(BLOB_PULL, source="p2p") == 5
    fam = next(f for f in text_string_to_metric_families(m.render()) if f.name == BLOB_PULL)
    buckets = {s.labels["le"]: s.value for s in fam.samples if s.name.endswith("_bucket")}
    assert buckets["0.05"] == 1
    assert buckets["0.25"] == 3
    assert buckets["10.0"] == 4
    assert buckets["600.0"] == 4
    assert buckets["+Inf"] == 5
    total = next(s.value for s in fam.samples if s.name.endswith("_sum"))
    assert total == pytest.approx(4007.41)


def test_own_counters_follow_the_conventions() -> None:
    m = Metrics("n:1", "agent")
    m.inc("shoal_origin_fallback_total", "Blobs fetched from the origin by the agent itself")
    m.inc("shoal_origin_fallback_total", "Blobs fetched from the origin by the agent itself")
    assert m.value("shoal_origin_fallback_total") == 2
    with pytest.raises(ValueError, match="_total"):
        m.inc("shoal_fallbacks", "no unit, no _total")


def test_the_webhook_exports_no_p2p_families() -> None:
    m = Metrics("10.0.0.9:8443", "webhook", reference=False)
    names = {f.name for f in text_string_to_metric_families(m.render())}
    assert not names & REFERENCE_FAMILIES
    assert "shoal_traffic_bytes" not in names
    assert {"shoal_build_info", "process_cpu_seconds"} <= names


@pytest.fixture
async def exporter() -> AsyncIterator[tuple[Metrics, int]]:
    metrics = busy_metrics()
    runner, port = await serve_app(exporter_app(metrics), "127.0.0.1", 0)
    try:
        yield metrics, port
    finally:
        await runner.cleanup()


async def test_the_exporter_serves_it_over_http(exporter: tuple[Metrics, int]) -> None:
    metrics, port = exporter
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"http://127.0.0.1:{port}/metrics") as r,
    ):
        assert r.status == 200
        assert r.headers["Content-Type"] == CONTENT_TYPE
        body = await r.text()
    assert body.startswith("# HELP DADIP2P_Alive\n")
    names = {f.name for f in text_string_to_metric_families(body)}
    assert REFERENCE_FAMILIES | {"shoal_blob_bytes", PIECE_FETCH} <= names
    assert metrics.meters[MetricType.HTTP].count == 4096
