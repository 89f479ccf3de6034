"""What the mirror reports about the blobs it serves: where they came from, how long the
runtime waited for the first byte and for the last, and a request id on every answer."""

from __future__ import annotations

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from shoal.agent.service import Agent
from shoal.lab.image import BuiltImage
from shoal.observability.collectors import BLOB_BYTES, BLOB_FIRST_BYTE, BLOB_PULL


def scrape(agent: Agent) -> dict[str, dict[str, float]]:
    """``shoal_blob_bytes_total`` by source, and the histograms' counts by source."""
    out: dict[str, dict[str, float]] = {}
    for fam in text_string_to_metric_families(agent.metrics.render()):
        for s in fam.samples:
            if s.name in (BLOB_BYTES, f"{BLOB_PULL}_count", f"{BLOB_FIRST_BYTE}_count"):
                out.setdefault(s.name, {})[s.labels["source"]] = s.value
    return out


async def test_a_blob_counts_once_as_origin_then_as_store(
    cached_agent: Agent, image: BuiltImage
) -> None:
    layer = image.layers[0]
    url = f"http://127.0.0.1:{cached_agent.proxy_port}/v2/{image.repo}/blobs/{layer.digest}"
    async with aiohttp.ClientSession() as s:
        for _ in range(2):
            async with s.get(url) as r:
                assert r.status == 200
                await r.read()
        async with s.head(url) as r:  # a HEAD moves no blob: not counted
            assert r.status == 200
    got = scrape(cached_agent)
    assert got[BLOB_BYTES] == {"origin": layer.size, "store": layer.size}
    assert got[f"{BLOB_PULL}_count"] == {"origin": 1, "store": 1}
    assert got[f"{BLOB_FIRST_BYTE}_count"] == {"origin": 1, "store": 1}
    pull = cached_agent.metrics.histograms[BLOB_PULL].series
    first = cached_agent.metrics.histograms[BLOB_FIRST_BYTE].series
    # the first byte comes no later than the last
    assert first[("origin",)][1][0] <= pull[("origin",)][1][0]


async def test_a_relay_counts_origin_bytes(agent: Agent, image: BuiltImage) -> None:
    layer = image.layers[2]
    url = f"http://127.0.0.1:{agent.proxy_port}/v2/{image.repo}/blobs/{layer.digest}"
    async with aiohttp.ClientSession() as s, s.get(url, headers={"Range": "bytes=0-99"}) as r:
        assert r.status == 206
        assert len(await r.read()) == 100
    assert scrape(agent)[BLOB_BYTES] == {"origin": 100}


async def test_every_answer_carries_a_request_id(agent: Agent, image: BuiltImage) -> None:
    base = f"http://127.0.0.1:{agent.proxy_port}/v2/{image.repo}"
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{base}/manifests/{image.tag}") as r:
            assert r.status == 200
            first = r.headers["X-Request-Id"]
        async with s.get(f"{base}/blobs/sha256:{'0' * 64}") as r:  # an error answer too
            assert r.status == 404
            second = r.headers["X-Request-Id"]
        async with s.get(f"{base}/manifests/{image.tag}", headers={"X-Request-Id": "pod-7.a"}) as r:
            assert r.headers["X-Request-Id"] == "pod-7.a"  # the client's own id is kept
        bad = {"X-Request-Id": "x" * 200}
        async with s.get(f"{base}/manifests/{image.tag}", headers=bad) as r:
            assert r.headers["X-Request-Id"] != bad["X-Request-Id"]
    assert len({first, second}) == 2
    assert all(len(i) == 16 for i in (first, second))
