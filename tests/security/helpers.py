"""Parts for the control-API attacks: a peer that only does the handshake, a TCP relay
that records what crosses it (the test's ``tcpdump``), a root in this process with its
own CA, and a signed request as an agent (or an attacker holding the secret) sends it."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from shoal.config import parse_config
from shoal.control.auth import HEADER, sign
from shoal.errors import ShoalError
from shoal.lab.certs import ControlCerts, make_control_certs
from shoal.root.service import Root
from shoal.wire import Authenticated, Connection, NeedData, Role

SECRET = "an-agents-cluster-secret-0123456789"


@dataclass
class HandshakePeer:
    """A listener that completes the real wire handshake (``shoal.wire.Connection``)
    and nothing more: what the root's vetting must see from a live agent."""

    secret: str = SECRET
    port: int = 0
    handshakes: int = 0
    server: asyncio.Server | None = None

    @property
    def peer_id(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Connection(Role.SERVER, self.secret.encode(), node=self.peer_id)
        writer.write(conn.data_to_send())
        try:
            while data := await reader.read(65536):
                conn.receive_data(data)
                while not isinstance(event := conn.next_event(), NeedData):
                    if isinstance(event, Authenticated):
                        self.handshakes += 1
                out = conn.data_to_send()
                if out:
                    writer.write(out)
        except (OSError, ShoalError):  # the probe hangs up as soon as it is satisfied
            pass
        finally:
            writer.close()


@asynccontextmanager
async def handshake_peer(secret: str = SECRET) -> AsyncIterator[HandshakePeer]:
    peer = HandshakePeer(secret)
    peer.server = await asyncio.start_server(peer._client, "127.0.0.1", 0)
    peer.port = peer.server.sockets[0].getsockname()[1]
    try:
        yield peer
    finally:
        peer.server.close()
        await peer.server.wait_closed()


@dataclass
class Relay:
    """TCP relay ``listen -> target`` that keeps every byte in both directions."""

    target: tuple[str, int]
    port: int = 0
    upstream: bytearray = field(default_factory=bytearray)
    downstream: bytearray = field(default_factory=bytearray)
    connections: int = 0

    @property
    def captured(self) -> bytes:
        return bytes(self.upstream) + bytes(self.downstream)

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, keep: bytearray
    ) -> None:
        try:
            while data := await reader.read(65536):
                keep += data
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        await asyncio.gather(
            self._pipe(reader, up_writer, self.upstream),
            self._pipe(up_reader, writer, self.downstream),
        )


@asynccontextmanager
async def relay(target: tuple[str, int], port: int = 0) -> AsyncIterator[Relay]:
    r = Relay(target)
    server = await asyncio.start_server(r._client, "127.0.0.1", port)
    r.port = server.sockets[0].getsockname()[1]
    try:
        yield r
    finally:
        server.close()
        await server.wait_closed()


def root_config(
    tmp_path: Path, certs: ControlCerts | None, registry: str, **sections: dict[str, Any]
) -> Any:
    data: dict[str, Any] = {
        "DeployConfig": {"mode": "root"},
        "ExporterConfig": {"enable": False},
        "ProxyConfig": {"listen": "127.0.0.1", "port": 0},
        "P2PConfig": {"listen": "127.0.0.1", "advertise": "127.0.0.1", "p2pPort": 0},
        "CacheConfig": {"path": str(tmp_path / "root-cache"), "pieceSize": 1 << 20},
        "UpstreamConfig": {
            "default": registry,
            "registries": [{"host": registry, "plainHTTP": True}],
            "accessCheckTtl": 0,
        },
        "ControlConfig": certs.config() if certs is not None else {"tls": False},
    }
    data["P2PConfig"]["secret"] = SECRET
    for key, value in sections.items():
        data.setdefault(key, {}).update(value)
    return parse_config(data)


@dataclass
class RootUnderTest:
    root: Root
    certs: ControlCerts
    session: aiohttp.ClientSession

    @property
    def base(self) -> str:
        return f"https://127.0.0.1:{self.root.control_port}"

    def tls(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.certs.ca_file))

    async def call(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        *,
        headers: dict[str, str] | None = None,
        source: str | None = None,
    ) -> tuple[int, bytes]:
        """A signed request (``headers`` given: exactly those headers instead)."""
        sent = headers if headers is not None else signed_headers(method, path, body)
        if source is None:
            async with self.session.request(method, self.base + path, data=body, headers=sent) as r:
                return r.status, await r.read()
        connector = aiohttp.TCPConnector(ssl=self.tls(), local_addr=(source, 0))
        async with (
            aiohttp.ClientSession(connector=connector) as s,
            s.request(method, self.base + path, data=body, headers=sent) as r,
        ):
            return r.status, await r.read()


def signed_headers(method: str, path: str, body: bytes) -> dict[str, str]:
    return {
        HEADER: sign(SECRET.encode(), method, path, body, time.time()),
        "Content-Type": "application/json",
    }


@asynccontextmanager
async def root_under_test(
    tmp_path: Path, registry: str, **sections: dict[str, Any]
) -> AsyncIterator[RootUnderTest]:
    certs = make_control_certs(tmp_path / "tls", ["127.0.0.1"])
    cfg = root_config(tmp_path, certs, registry, **sections)
    async with Root(cfg) as root:
        ctx = ssl.create_default_context(cafile=str(certs.ca_file))
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session:
            yield RootUnderTest(root, certs, session)
