"""Piece transfers over TLS (``P2PConfig.tls``): real TLS (trustme CAs), real sockets.

What a user relies on: with the switch on, a private layer's bytes never cross the
network in clear (a recording forwarder between the peers sees none of them, where it
sees them without TLS), and only holders of a certificate of the cluster's CA talk.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest
import trustme

from shoal.cache import PieceStore
from shoal.config import parse_config
from shoal.errors import ConfigInvalidError
from shoal.lab.cluster import LocalCluster
from shoal.lab.image import build_image, push_image
from shoal.lab.origin import OriginRegistry
from shoal.peer import PeerClient, PeerServer, PeerUnavailableError
from shoal.peer.tls import PeerTLS, contexts, peer_tls
from tests.cache.blobs import PIECE, pieces, sha
from tests.peer.conftest import SECRET, add_blob


def write_ca(tmp_path: Path, name: str) -> tuple[str, str, str]:
    ca = trustme.CA()
    cert = ca.issue_cert("shoal-peer")
    paths = [tmp_path / f"{name}-{p}.pem" for p in ("cert", "key", "ca")]
    cert.cert_chain_pems[0].write_to_path(str(paths[0]))
    cert.private_key_pem.write_to_path(str(paths[1]))
    ca.cert_pem.write_to_path(str(paths[2]))
    return str(paths[0]), str(paths[1]), str(paths[2])


@pytest.fixture
def cluster_tls(tmp_path: Path) -> PeerTLS:
    return contexts(*write_ca(tmp_path, "cluster"))


class Recorder:
    """A TCP forwarder that keeps every byte it passes from the server to the client."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.seen = bytearray()
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Recorder:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.server.wait_closed()

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, keep: bool) -> None:
            try:
                while chunk := await src.read(1 << 16):
                    if keep:
                        self.seen += chunk
                    dst.write(chunk)
                    await dst.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                dst.close()

        for task in (
            asyncio.create_task(pipe(reader, up_w, False)),
            asyncio.create_task(pipe(up_r, writer, True)),
        ):
            self.tasks.add(task)


@pytest.mark.parametrize("tls_on", [True, False])
async def test_with_tls_no_piece_byte_crosses_the_wire_in_clear(
    store: PieceStore, cluster_tls: PeerTLS, tls_on: bool
) -> None:
    digest, data = await add_blob(store, 3)
    parts = pieces(data)
    server_ctx = cluster_tls.server if tls_on else None
    client_ctx = cluster_tls.client if tls_on else None
    async with (
        PeerServer(store, SECRET, host="127.0.0.1", ssl=server_ctx) as server,
        Recorder(server.port) as wire,
        PeerClient(SECRET, ssl=client_ctx) as client,
    ):
        peer = ("127.0.0.1", wire.port)
        stat = await client.stat(peer, digest)
        assert stat.size == len(data)
        for i in range(3):
            got = await client.read(peer, digest, i * PIECE, PIECE, sha256=sha(parts[i]))
            assert bytes(got) == parts[i]
    sample = parts[1][1000:1064]
    assert (sample in wire.seen) is not tls_on
    assert len(wire.seen) >= len(data)


async def test_only_the_cluster_ca_talks_and_tls_meets_only_tls(
    tmp_path: Path, store: PieceStore, cluster_tls: PeerTLS
) -> None:
    digest, _ = await add_blob(store, 1)
    stranger = contexts(*write_ca(tmp_path, "stranger"))
    async with PeerServer(store, SECRET, host="127.0.0.1", ssl=cluster_tls.server) as server:
        peer = ("127.0.0.1", server.port)
        for ctx in (stranger.client, None):  # another CA's certificate; no TLS at all
            async with PeerClient(SECRET, ssl=ctx, connect_timeout=2) as client:
                with pytest.raises(PeerUnavailableError):
                    await client.stat(peer, digest)
        async with PeerClient(SECRET, ssl=cluster_tls.client) as client:
            assert (await client.stat(peer, digest)).size == PIECE
    async with (
        PeerServer(store, SECRET, host="127.0.0.1") as plain,
        PeerClient(SECRET, ssl=cluster_tls.client, connect_timeout=2) as client,
    ):
        with pytest.raises(PeerUnavailableError):
            await client.stat(("127.0.0.1", plain.port), digest)


def test_the_switch_and_its_files_are_checked_at_start(tmp_path: Path) -> None:
    assert peer_tls(parse_config({}).p2p) is None  # off by default
    cert, key, ca = write_ca(tmp_path, "c")
    on = {"tls": True, "tlsCertFile": cert, "tlsKeyFile": key, "tlsCaFile": ca}
    assert peer_tls(parse_config({"P2PConfig": on}).p2p) is not None
    missing = dict(on, tlsCaFile=str(tmp_path / "nope.pem"))
    with pytest.raises(ConfigInvalidError, match=r"P2PConfig\.tlsCaFile"):
        peer_tls(parse_config({"P2PConfig": missing}).p2p)
    swapped = dict(on, tlsKeyFile=cert)  # not a key
    with pytest.raises(ConfigInvalidError, match=r"P2PConfig\.tls"):
        peer_tls(parse_config({"P2PConfig": swapped}).p2p)


async def test_a_swarm_with_the_switch_on_pulls_through_tls(
    tmp_path: Path, origin: OriginRegistry
) -> None:
    """Real ``shoal root`` and ``shoal agent`` processes, ``P2PConfig.tls: true``: every
    piece goes root -> agent and agent -> agent over TLS, the origin serves each blob
    once, and the bytes are whole."""
    img = build_image(tmp_path / "img", repo="tls/swarm", tag="1", layer_sizes=[3 << 20])
    await push_image(origin.url, img)
    layer = img.layers[0]
    cert, key, ca = write_ca(tmp_path, "swarm")
    tls = {"tls": True, "tlsCertFile": cert, "tlsKeyFile": key, "tlsCaFile": ca}
    async with (
        LocalCluster(tmp_path / "c", origin.address, agents=2, extra={"P2PConfig": tls}) as c,
        aiohttp.ClientSession() as s,
    ):
        for node in c.agents:
            url = f"http://{node.mirror}/v2/{img.repo}/blobs/{layer.digest}"
            async with s.get(url, params={"ns": origin.address}) as r:
                assert r.status == 200
                assert await r.read() == layer.path.read_bytes()
        secret = c.secret.encode()
        for node in (c.roots[0], *c.agents):  # each serves pieces over TLS only
            peer = ("127.0.0.1", node.p2p_port)
            async with PeerClient(secret, connect_timeout=2) as plain:
                with pytest.raises(PeerUnavailableError):
                    await plain.stat(peer, layer.digest)
            async with PeerClient(secret, ssl=contexts(cert, key, ca).client) as client:
                assert (await client.stat(peer, layer.digest)).size == layer.size
    assert origin.blob_gets(layer.digest) == 1
