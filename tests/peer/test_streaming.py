"""A piece passed on while it arrives: the verified prefix streams to a waiting child.

The middle of a chain (``agent/passon.py``): a fetch's buffer fills, its chunks are
checked against the root's chunk hashes, and the peer server sends what matched to a
child whose read waits for the piece, before the piece is stored."""

from __future__ import annotations

import asyncio
import hashlib

import pytest

from shoal.agent.passon import PassOn, store_piece
from shoal.cache import PieceStore
from shoal.cache.buffers import BufferPool
from shoal.cache.chunks import CHUNK, chunk_digests
from shoal.peer import PeerClient, PeerServer, PeerUnavailableError
from tests.peer.conftest import SECRET
from tests.peer.test_peer import until

SIZE = 4 * CHUNK  # one piece of four chunks


async def blob(store: PieceStore) -> tuple[str, bytes]:
    data = hashlib.shake_256(b"streamed").digest(2 * SIZE)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    await store.create(digest, len(data), piece_size=SIZE)
    return digest, data[:SIZE]


def fetch(
    store: PieceStore, pool: BufferPool, digest: str, piece: bytes, parent: str = "p"
) -> PassOn:
    """A fetch of piece 0 from ``parent`` whose bytes are about to arrive, its chunk
    hashes known."""
    po = PassOn(store, pool, digest, 0, parent)
    po.check.attach(pool.view(SIZE))
    po.know(chunk_digests(piece))
    return po


def arrive(po: PassOn, data: bytes, upto: int) -> None:
    buf = po.check.buffer
    assert buf is not None
    buf[po.check.filled : upto] = data[po.check.filled : upto]
    po.check.arrived(upto)


async def test_a_child_gets_the_verified_head_of_a_piece_before_it_is_stored(
    store: PieceStore,
) -> None:
    digest, piece = await blob(store)
    pool = BufferPool()
    async with (
        PeerServer(store, SECRET, host="127.0.0.1", piece_wait=5) as server,
        PeerClient(SECRET) as client,
    ):
        started: list[bool] = []
        got = bytearray(SIZE)
        child = asyncio.create_task(
            client.read(
                ("127.0.0.1", server.port), digest, 0, SIZE, into=got,
                on_start=lambda: started.append(True),
            )
        )  # fmt: skip
        po = fetch(store, pool, digest, piece)
        await asyncio.sleep(0.05)
        arrive(po, piece, CHUNK - 1)  # not a whole chunk: nothing to pass on yet
        await asyncio.sleep(0.05)
        assert not started
        arrive(po, piece, CHUNK + 100)
        await until(lambda: bytes(got[:CHUNK]) == piece[:CHUNK])
        assert started and not store.has_piece(digest, 0)
        assert got[CHUNK : CHUNK + 100] == bytes(100)  # only what was checked went out
        arrive(po, piece, SIZE)
        assert po.check.buffer is not None
        await store_piece(store, digest, 0, po.check.buffer, hashlib.sha256(piece).digest(),
                          po, lambda _: None)  # fmt: skip
        assert bytes(await asyncio.wait_for(child, 5)) == piece
        assert store.has_piece(digest, 0) and server.reads == 1


async def test_bytes_that_do_not_match_are_never_sent_on(store: PieceStore) -> None:
    digest, piece = await blob(store)
    pool = BufferPool()
    async with (
        PeerServer(store, SECRET, host="127.0.0.1", piece_wait=0.3) as server,
        PeerClient(SECRET) as client,
    ):
        got = bytearray(SIZE)
        child = asyncio.create_task(
            client.read(("127.0.0.1", server.port), digest, 0, SIZE, into=got)
        )
        po = fetch(store, pool, digest, piece)
        arrive(po, piece, CHUNK)
        await until(lambda: bytes(got[:CHUNK]) == piece[:CHUNK])
        bad = piece[:CHUNK] + bytes(b ^ 0xFF for b in piece[CHUNK : 2 * CHUNK]) + piece[2 * CHUNK :]
        arrive(po, bad, SIZE)
        assert po.check.bad
        # the child's answer had begun: it can only be cut, never finished with bad bytes
        with pytest.raises(PeerUnavailableError):
            await asyncio.wait_for(child, 5)
        assert got[CHUNK:] == bytes(SIZE - CHUNK) and not store.has_piece(digest, 0)
        po.let_go()


async def test_a_second_fetch_of_the_piece_takes_over_where_the_first_stopped(
    store: PieceStore,
) -> None:
    """The first fetch fails after one chunk; the child's stream goes on from the second
    fetch's bytes (the same bytes: a piece is content-addressed)."""
    digest, piece = await blob(store)
    pool = BufferPool()
    async with (
        PeerServer(store, SECRET, host="127.0.0.1", piece_wait=5) as server,
        PeerClient(SECRET) as client,
    ):
        got = bytearray(SIZE)
        child = asyncio.create_task(
            client.read(("127.0.0.1", server.port), digest, 0, SIZE, into=got)
        )
        first = fetch(store, pool, digest, piece)
        arrive(first, piece, 2 * CHUNK)
        # (the child's socket wakes it per 64 KiB: the tail of what was sent may wait)
        await until(lambda: bytes(got[:CHUNK]) == piece[:CHUNK])
        await asyncio.sleep(0.05)
        first.unstage()  # its parent went away
        first.let_go()
        second = fetch(store, pool, digest, piece)
        arrive(second, piece, CHUNK)  # behind what the child has: nothing new to send
        await asyncio.sleep(0.05)
        assert got[2 * CHUNK :] == bytes(2 * CHUNK)
        arrive(second, piece, SIZE)
        assert bytes(await asyncio.wait_for(child, 5)) == piece
        second.unstage()
        second.let_go()


async def test_a_piece_is_not_streamed_back_to_the_peer_it_comes_from(store: PieceStore) -> None:
    """Two agents would each wait for the other's bytes: the peer feeding a piece gets
    it only once it is stored."""
    digest, piece = await blob(store)
    pool = BufferPool()
    async with (
        PeerServer(store, SECRET, host="127.0.0.1", piece_wait=5) as server,
        PeerClient(SECRET, node="10.0.0.9:65002") as feeder,
    ):
        started: list[bool] = []
        back = asyncio.create_task(
            feeder.read(
                ("127.0.0.1", server.port), digest, 0, SIZE,
                on_start=lambda: started.append(True),
            )
        )  # fmt: skip
        po = fetch(store, pool, digest, piece, parent="10.0.0.9:65002")
        arrive(po, piece, 3 * CHUNK)
        await asyncio.sleep(0.2)
        assert not started and server.passed_on == 0
        arrive(po, piece, SIZE)
        assert po.check.buffer is not None
        await store_piece(store, digest, 0, po.check.buffer, hashlib.sha256(piece).digest(),
                          po, lambda _: None)  # fmt: skip
        assert bytes(await asyncio.wait_for(back, 5)) == piece
        assert server.passed_on == 0
