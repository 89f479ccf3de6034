"""An agent with a piece store: one origin fetch per blob, then the store serves,
and only to clients the origin lets read the blob."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import aiohttp
import pytest

from shoal.agent.service import Agent
from shoal.lab.image import BuiltImage, basic_authorization, build_image, push_image
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
        # the server counts its last write after the client has it
        async with asyncio.timeout(5):
            while a.metrics.meters[MetricType.PREAD].count < layer.size:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        served = a.metrics.meters[MetricType.PREAD].count
        assert served == layer.size
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


async def test_a_cold_pull_costs_the_origin_no_request_of_the_agents_own(
    tmp_path: Path, private_origin: OriginRegistry
) -> None:
    """The manifest the origin served this client is its access check for every blob
    the manifest names (the registry only takes manifests whose blobs are in the
    repository): no HEAD per blob. Another credential rides on none of it."""
    img = build_image(tmp_path / "img", repo="team/app", tag="1", layer_sizes=[400_000] * 3)
    good = basic_authorization(USER, PASSWORD)
    await push_image(private_origin.url, img, authorization=good)
    cfg = agent_config(private_origin.address, cache=tmp_path / "cache")
    async with Agent(cfg) as a, aiohttp.ClientSession() as s:
        base = f"http://127.0.0.1:{a.proxy_port}/v2/{img.repo}"
        before = len(private_origin.served())
        accept = {"Accept": "application/vnd.oci.image.manifest.v1+json"}
        async with s.get(f"{base}/manifests/1", headers={"Authorization": good, **accept}) as r:
            assert r.status == 200
        for blob in (img.config, *img.layers):
            async with s.get(f"{base}/blobs/{blob.digest}", headers={"Authorization": good}) as r:
                assert r.status == 200
                assert await r.read() == blob.path.read_bytes()
        await asyncio.sleep(0.3)  # the registry logs a request after answering it
        asked = [(q.method, q.status) for q in private_origin.served()[before:]]
        assert ("HEAD", 200) not in asked
        assert asked.count(("GET", 200)) == 1 + 1 + len(img.layers)
        other = basic_authorization(USER, "wrong")
        async with s.get(
            f"{base}/blobs/{img.layers[0].digest}", headers={"Authorization": other}
        ) as r:
            assert r.status == 401
    # warm: a restarted agent holds every blob; the manifest alone lets this client read
    async with Agent(cfg) as a, aiohttp.ClientSession() as s:
        base = f"http://127.0.0.1:{a.proxy_port}/v2/{img.repo}"
        before = len(private_origin.served())
        async with s.get(f"{base}/manifests/1", headers={"Authorization": good, **accept}) as r:
            assert r.status == 200
        for blob in (img.config, *img.layers):
            async with s.get(f"{base}/blobs/{blob.digest}", headers={"Authorization": good}) as r:
                assert await r.read() == blob.path.read_bytes()
        await asyncio.sleep(0.3)
        asked = [(q.method, q.status) for q in private_origin.served()[before:]]
        assert asked == [("GET", 200)]
        assert a.mirror.access.manifest_grants == 1


@pytest.mark.parametrize("aio", [0, 1])
async def test_a_cold_blob_of_many_pieces_streams_whole_either_way(
    tmp_path: Path, origin: OriginRegistry, aio: int
) -> None:
    """Served while it arrives (``aioEnable: 1``: from the buffers it lands in; 0: from
    the page cache once written), by several clients at once, and stored whole."""
    img = build_image(tmp_path / "img", repo="many/pieces", tag="1", layer_sizes=[9 << 20])
    await push_image(origin.url, img)
    layer = img.layers[0]
    cfg = agent_config(
        origin.address,
        cache=tmp_path / "cache",
        CacheConfig={"aioEnable": aio, "pieceSize": 1 << 20},
    )
    async with Agent(cfg) as a, aiohttp.ClientSession() as s:
        url = f"http://127.0.0.1:{a.proxy_port}/v2/{img.repo}/blobs/{layer.digest}"

        async def pull() -> bytes:
            async with s.get(url) as r:
                assert r.status == 200
                return await r.read()

        bodies = await asyncio.wait_for(asyncio.gather(pull(), pull(), pull()), 30)
        assert list(bodies) == [layer.path.read_bytes()] * 3
        assert a.store is not None
        info = a.store.lookup(layer.digest)
        assert info is not None and info.complete and info.piece_count == 10
    assert origin.blob_gets(layer.digest) == 1


@pytest.mark.parametrize("mib", [3, 24])
async def test_an_origin_that_dies_mid_blob_cuts_the_stream_it_fed(
    tmp_path: Path, mib: int
) -> None:
    """The double: a socket server answering one blob GET with its length and half its
    bytes, then closing (the real registry cannot be made to). The client must get a
    cut body at once, not a connection left hanging, and nothing is kept: a small blob
    streamed as it arrives, a big one sent from the page cache piece by piece."""
    data = bytes(range(256)) * (mib * 4096)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()

    async def half(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(data)}\r\n\r\n".encode()
        writer.write(head + data[: len(data) // 2])
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(half, "127.0.0.1", 0)
    host = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        cfg = agent_config(host, cache=tmp_path / "cache")
        async with Agent(cfg) as a, aiohttp.ClientSession() as s:
            url = f"http://127.0.0.1:{a.proxy_port}/v2/x/y/blobs/{digest}"
            async with asyncio.timeout(10), s.get(url) as r:
                with pytest.raises(aiohttp.ClientPayloadError):
                    await r.read()
            assert a.store is not None and a.store.lookup(digest) is None
    finally:
        server.close()
        await server.wait_closed()
