"""Upstream bodies received in place (``recv_into``), from the real registry, plain and TLS.

One double: a raw socket server that announces a length and sends less. The real
registry cannot be made to cut a body short; that server only answers one GET.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import trustme

from shoal.agent.service import Agent
from shoal.cache.buffers import BufferPool, is_aligned
from shoal.config import RegistryConfig, UpstreamConfig
from shoal.lab.image import build_image, push_image
from shoal.lab.origin import OriginRegistry
from shoal.registry.bodyreader import BodyEndedError, BodyReader
from shoal.registry.upstream import UpstreamClient
from tests.conftest import agent_config, need_binary

MiB = 1 << 20


async def read_all(reader: BodyReader, chunk: int) -> bytes:
    pool = BufferPool()
    assert reader.length is not None
    out = bytearray()
    left = reader.length
    views = []
    for _ in range(2):  # two queued: the socket fills one while the other is read
        if left:
            views.append(pool.view(min(chunk, left)))
            left -= len(views[-1])
            reader.submit(views[-1])
    while views:
        got = await reader.next()
        assert is_aligned(got)
        out += got
        views.pop(0)
        if left:
            views.append(pool.view(min(chunk, left)))
            left -= len(views[-1])
            reader.submit(views[-1])
    return bytes(out)


async def test_a_large_body_arrives_in_place_a_small_one_through_aiohttp(
    tmp_path: Path, origin: OriginRegistry
) -> None:
    img = build_image(tmp_path / "img", repo="body/x", tag="1", layer_sizes=[3 * MiB, 1000])
    await push_image(origin.url, img)
    registry = RegistryConfig(host=origin.address, plain_http=True)
    async with UpstreamClient(UpstreamConfig(default=origin.address, registries=(registry,))) as up:
        for layer, in_place in ((img.layers[0], True), (img.layers[1], False)):
            path = f"/v2/{img.repo}/blobs/{layer.digest}"
            async with await up.request("GET", origin.address, path, {}) as resp:
                reader = BodyReader(resp)
                assert reader.in_place is in_place
                try:
                    body = await read_all(reader, 1 * MiB)
                finally:
                    reader.close()
            assert body == layer.path.read_bytes()
        # the connection a taken-over body used is closed, and the next request works
        layer = img.layers[0]
        path = f"/v2/{img.repo}/blobs/{layer.digest}"
        async with await up.request("GET", origin.address, path, {}) as resp:
            assert hashlib.sha256(await resp.read()).hexdigest() == layer.digest[7:]


async def test_a_body_cut_short_is_an_error_not_a_short_success() -> None:
    async def half(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2000000\r\n\r\n" + bytes(700_000))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(half, "127.0.0.1", 0)
    host = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    registry = RegistryConfig(host=host, plain_http=True)
    try:
        config = UpstreamConfig(default=host, registries=(registry,))
        async with (
            UpstreamClient(config) as up,
            await up.request("GET", host, "/v2/x/blobs/y", {}) as resp,
        ):
            reader = BodyReader(resp)
            assert reader.in_place
            try:
                with pytest.raises(BodyEndedError):
                    await read_all(reader, 1 * MiB)
            finally:
                reader.close()
    finally:
        server.close()
        await server.wait_closed()


@pytest.fixture
async def tls_origin(tmp_path: Path) -> AsyncIterator[tuple[OriginRegistry, Path]]:
    need_binary("docker-registry")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert_path, key_path, ca_path = tmp_path / "c.pem", tmp_path / "k.pem", tmp_path / "ca.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    ca.cert_pem.write_to_path(str(ca_path))
    async with OriginRegistry(tmp_path / "tls", tls=(cert_path, key_path)) as reg:
        yield reg, ca_path


async def test_through_the_store_and_the_relay_over_tls(
    tmp_path: Path, tls_origin: tuple[OriginRegistry, Path]
) -> None:
    """The in-place body works on asyncio's TLS transport too (it decrypts straight into
    the piece buffer), for the relay and for the store."""
    origin, ca_path = tls_origin
    img = build_image(tmp_path / "img", repo="tls/big", tag="1", layer_sizes=[5 * MiB])
    await push_image(origin.url, img, ssl_context=ssl.create_default_context(cafile=str(ca_path)))
    layer = img.layers[0]
    path = f"/v2/{img.repo}/blobs/{layer.digest}"
    registry = RegistryConfig(host=origin.address, ca_file=str(ca_path))
    config = UpstreamConfig(default=origin.address, registries=(registry,))
    async with (
        UpstreamClient(config) as up,
        await up.request("GET", origin.address, path, {}) as resp,
    ):
        reader = BodyReader(resp)
        assert reader.in_place
        try:
            assert await read_all(reader, 1 * MiB) == layer.path.read_bytes()
        finally:
            reader.close()
    tls: dict[str, object] = {"registries": [{"host": origin.address, "caFile": str(ca_path)}]}
    for cache in (None, tmp_path / "cache"):
        cfg = agent_config(origin.address, cache=cache, UpstreamConfig=tls)
        async with (
            Agent(cfg) as a,
            aiohttp.ClientSession() as s,
            s.get(f"http://127.0.0.1:{a.proxy_port}{path}") as r,
        ):
            assert r.status == 200
            assert await r.read() == layer.path.read_bytes()
