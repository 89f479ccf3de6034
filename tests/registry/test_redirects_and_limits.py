"""Upstream behaviour the filesystem-backed test registry cannot show.

A registry backed by object storage answers a blob GET with a redirect to another host,
and a busy one answers slowly. Debian's docker-registry with filesystem storage does
neither, so these tests put a small aiohttp server in its place: it is a stand-in for
object storage, not for the mirror's client or the registry API as a whole.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web

from shoal.agent.service import Agent
from shoal.config import Config
from tests.conftest import agent_config

BLOB = bytes(range(256)) * 4096  # 1 MiB
DIGEST = f"sha256:{hashlib.sha256(BLOB).hexdigest()}"


@dataclass
class Storage:
    """Records what reached the 'object store' and how many requests overlapped."""

    port: int = 0
    seen_auth: list[str | None] = field(default_factory=list)
    active: int = 0
    peak: int = 0
    delay: float = 0.0


async def _start(app: web.Application) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port: int = runner.addresses[0][1]
    return runner, port


@pytest.fixture
async def storage() -> AsyncIterator[Storage]:
    state = Storage()

    async def blob(request: web.Request) -> web.StreamResponse:
        state.seen_auth.append(request.headers.get("Authorization"))
        state.active += 1
        state.peak = max(state.peak, state.active)
        try:
            resp = web.StreamResponse()
            resp.content_length = len(BLOB)
            await resp.prepare(request)
            half = len(BLOB) // 2
            await resp.write(BLOB[:half])
            await asyncio.sleep(state.delay)
            await resp.write(BLOB[half:])
            return resp
        finally:
            state.active -= 1

    app = web.Application()
    app.router.add_get("/bucket/{key}", blob)
    runner, state.port = await _start(app)
    yield state
    await runner.cleanup()


@pytest.fixture
async def redirecting_registry(storage: Storage) -> AsyncIterator[str]:
    async def blob(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != "Bearer good":
            return web.Response(status=401, headers={"WWW-Authenticate": 'Bearer realm="x"'})
        raise web.HTTPTemporaryRedirect(f"http://localhost:{storage.port}/bucket/data?sig=1")

    app = web.Application()
    app.router.add_get("/v2/{name:.+}/blobs/{digest}", blob)
    runner, port = await _start(app)
    yield f"127.0.0.1:{port}"
    await runner.cleanup()


def storage_config(
    registry: str, storage: Storage, proxy: dict[str, object] | None = None
) -> Config:
    """The registry with its object store listed (``redirectHosts``), as an operator
    lists a registry's storage host; the store is on loopback, so it must be exact."""
    reg = {"host": registry, "plainHTTP": True, "redirectHosts": [f"localhost:{storage.port}"]}
    return agent_config(registry, UpstreamConfig={"registries": [reg]}, ProxyConfig=proxy or {})


async def test_blob_redirect_is_followed_without_leaking_credentials(
    storage: Storage, redirecting_registry: str
) -> None:
    cfg = storage_config(redirecting_registry, storage)
    async with Agent(cfg) as a, aiohttp.ClientSession() as s:
        url = f"http://127.0.0.1:{a.proxy_port}/v2/lib/app/blobs/{DIGEST}"
        async with s.get(url, headers={"Authorization": "Bearer good"}) as r:
            assert r.status == 200
            assert await r.read() == BLOB
    assert storage.seen_auth == [None]


async def test_at_most_proxy_concurrency_limit_blobs_upstream_and_the_rest_wait(
    storage: Storage, redirecting_registry: str
) -> None:
    storage.delay = 0.2
    cfg = storage_config(redirecting_registry, storage, {"proxyConcurrencyLimit": 2})
    async with Agent(cfg) as a, aiohttp.ClientSession() as s:
        url = f"http://127.0.0.1:{a.proxy_port}/v2/lib/app/blobs/{DIGEST}"

        async def pull() -> bytes:
            async with s.get(url, headers={"Authorization": "Bearer good"}) as r:
                assert r.status == 200
                return await r.read()

        bodies = await asyncio.gather(*(pull() for _ in range(5)))
    assert all(body == BLOB for body in bodies)
    assert storage.peak == 2
    assert len(storage.seen_auth) == 5
