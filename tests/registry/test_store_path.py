"""An agent with a piece store: one origin fetch per blob, then the store serves,
and only to clients the origin lets read the blob."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import aiohttp

from shoal.agent.service import Agent
from shoal.lab.image import BuiltImage, basic_authorization
from shoal.lab.origin import OriginRegistry
from shoal.observability import MetricType
from tests.conftest import PASSWORD, USER, agent_config


async def test_second_pull_comes_from_the_store(
    cached_agent: Agent, origin: OriginRegistry, image: BuiltImage
) -> None:
    layer = image.layers[1]
    url = f"http://127.0.0.1:{cached_agent.proxy_port}/v2/{image.repo}/blobs/{layer.digest}"
    async with aiohttp.ClientSession() as s:
        bodies = []
        for _ in range(2):
            async with s.get(url) as r:
                assert r.status == 200
                assert r.headers["Docker-Content-Digest"] == layer.digest
                bodies.append(await r.read())
        async with s.get(url, headers={"Range": "bytes=100-199"}) as r:
            assert r.status == 206
            assert r.headers["Content-Range"] == f"bytes 100-199/{layer.size}"
            part = await r.read()
        async with s.head(url) as r:
            assert int(r.headers["Content-Length"]) == layer.size
    data = layer.path.read_bytes()
    assert bodies == [data, data]
    assert part == data[100:200]
    assert origin.blob_gets(layer.digest) == 1
    assert cached_agent.metrics.meters[MetricType.DISK].count > 0
    allocated, used = cached_agent.store.usage() if cached_agent.store else (0, 0)
    assert allocated == 1 << 30
    assert used == layer.size


async def test_concurrent_clients_share_one_origin_fetch(
    cached_agent: Agent, origin: OriginRegistry, image: BuiltImage
) -> None:
    layer = image.layers[1]
    url = f"http://127.0.0.1:{cached_agent.proxy_port}/v2/{image.repo}/blobs/{layer.digest}"

    async def pull(s: aiohttp.ClientSession) -> str:
        async with s.get(url) as r:
            return hashlib.sha256(await r.read()).hexdigest()

    async with aiohttp.ClientSession() as s:
        digests = await asyncio.gather(*(pull(s) for _ in range(6)))
    assert {f"sha256:{d}" for d in digests} == {layer.digest}
    assert origin.blob_gets(layer.digest) == 1


async def test_a_cached_private_blob_is_served_only_to_clients_the_origin_accepts(
    tmp_path: Path, private_origin: OriginRegistry, private_image: BuiltImage
) -> None:
    layer = private_image.layers[0]
    cfg = agent_config(private_origin.address, cache=tmp_path / "cache")
    async with Agent(cfg) as a, aiohttp.ClientSession() as s:
        url = f"http://127.0.0.1:{a.proxy_port}/v2/{private_image.repo}/blobs/{layer.digest}"
        good = {"Authorization": basic_authorization(USER, PASSWORD)}
        async with s.get(url, headers=good) as r:
            assert r.status == 200
            assert await r.read() == layer.path.read_bytes()
        served = a.metrics.meters[MetricType.PREAD].count
        for headers in ({}, {"Authorization": basic_authorization(USER, "nope")}):
            async with s.get(url, headers=headers) as r:
                assert r.status == 401
                assert r.headers["WWW-Authenticate"] == 'Basic realm="shoal-lab"'
                assert len(await r.read()) < 500
            async with s.head(url, headers=headers) as r:
                assert r.status == 401
        assert a.metrics.meters[MetricType.PREAD].count == served
    assert private_origin.blob_gets(layer.digest) == 1


async def test_accelerator_ranges_come_from_the_store_after_the_access_check(
    tmp_path: Path, private_origin: OriginRegistry, private_image: BuiltImage
) -> None:
    layer = private_image.layers[0]
    data = layer.path.read_bytes()
    cfg = agent_config(private_origin.address, cache=tmp_path / "cache")
    blob_url = f"http://{private_origin.address}/v2/{private_image.repo}/blobs/{layer.digest}"
    async with Agent(cfg) as a, aiohttp.ClientSession() as s:
        url = f"http://127.0.0.1:{a.proxy_port}/accelerator/{blob_url}"
        good = {"Authorization": basic_authorization(USER, PASSWORD), "Range": "bytes=10-4105"}
        async with s.get(url, headers=good) as r:
            assert r.status == 206
            assert await r.read() == data[10:4106]
        async with s.get(url, headers={"Range": "bytes=10-4105"}) as r:
            assert r.status == 401
        assert a.store is not None
        info = a.store.lookup(layer.digest)
        assert info is not None
    assert private_origin.blob_gets(layer.digest) == 1
