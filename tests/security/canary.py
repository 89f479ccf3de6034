"""Stand-ins for internal services an attacker would aim at, and a registry that aims.

A canary is a plain TCP listener on an address the egress policy must refuse (another
loopback address, ``[::1]``, a port of the registry's own address). It counts every
connection and byte it gets and answers anything with a ``206`` carrying a marker, so
a mirror that followed a redirect to it would hand the marker to its client: the tests
assert 0 connections and no marker. The redirecting registry is a small aiohttp app
(Debian's docker-registry does not redirect to arbitrary URLs on demand); it stands in
for a registry, or a compromised one, answering blob requests with a ``Location``.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

MARK = b"CANARY-SECRET-0123456789-" * 4  # 100 bytes
BLOB = bytes(range(256)) * 64
DIGEST = f"sha256:{hashlib.sha256(BLOB).hexdigest()}"


@dataclass
class Canary:
    host: str
    port: int = 0
    connections: int = 0
    received: int = 0
    server: asyncio.Server | None = None

    @property
    def authority(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            data = await reader.read(65536)
            self.received += len(data)
            writer.write(
                b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-99/100\r\n"
                b"Content-Length: 100\r\nConnection: close\r\n\r\n" + MARK
            )
            await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()


@asynccontextmanager
async def canary(host: str, port: int = 0) -> AsyncIterator[Canary]:
    c = Canary(host)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    c.server = await asyncio.start_server(c._client, host, port, family=family)
    c.port = c.server.sockets[0].getsockname()[1]
    try:
        yield c
    finally:
        c.server.close()
        await c.server.wait_closed()


@dataclass
class Aiming:
    """The registry stand-in: each blob GET (and HEAD, if ``head_too``) is redirected to
    ``target``; with ``chain`` it first bounces back to itself (``?hop=1``, an allowed
    hop), so the hop to refuse is the second one."""

    port: int = 0
    target: str = ""
    status: int = 302
    head_too: bool = False
    chain: bool = False
    seen: list[str] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@asynccontextmanager
async def aiming_registry() -> AsyncIterator[Aiming]:
    state = Aiming()

    async def base(_: web.Request) -> web.Response:
        return web.json_response({})

    async def blob(request: web.Request) -> web.StreamResponse:
        state.seen.append(f"{request.method} {request.path_qs}")
        if request.method == "HEAD" and not state.head_too:
            return web.Response(headers={"Content-Length": str(len(BLOB))})
        if state.chain and request.query.get("hop") != "1":
            return web.Response(status=307, headers={"Location": f"{request.path}?hop=1"})
        return web.Response(status=state.status, headers={"Location": state.target})

    app = web.Application()
    app.router.add_get("/v2/", base)
    app.router.add_route("*", "/v2/{name:.+}/blobs/{digest}", blob)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    state.port = runner.addresses[0][1]
    try:
        yield state
    finally:
        await runner.cleanup()


class MapResolver(AbstractResolver):
    """A DNS we control: names to addresses, everything else unknown. Records asks."""

    def __init__(self, names: dict[str, list[str]]) -> None:
        self.names = names
        self.asked: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.asked.append(host)
        if host not in self.names:
            raise OSError(f"{host}: unknown to the test DNS")
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=port,
                family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for address in self.names[host]
        ]

    async def close(self) -> None:
        return None
