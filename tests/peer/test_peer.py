from __future__ import annotations

import asyncio
import functools
import io
import logging
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from shoal.cache import PieceStore
from shoal.cache import layout as cache_layout
from shoal.cache.buffers import is_aligned
from shoal.cache.journal import blob_dir
from shoal.observability import AuditLog, Metrics, MetricType
from shoal.peer import (
    PeerClient,
    PeerRequestError,
    PeerServer,
    PeerUnavailableError,
    parse_address,
)
from shoal.peer.buffers import BufferPool
from shoal.wire import (
    MAX_PIECES,
    MAX_READ,
    AuthFailedError,
    Connection,
    Data,
    ErrorCode,
    NeedData,
    ReadRequest,
    Role,
)
from tests.cache.blobs import PIECE, make_blob, pieces, sha
from tests.peer.conftest import SECRET, add_blob, has_ipv6


async def until(cond: Callable[[], bool]) -> None:
    for _ in range(200):
        if cond():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not reached")


HOSTS = [
    "127.0.0.1",
    pytest.param("::1", marks=pytest.mark.skipif(not has_ipv6(), reason="no ::1")),
]


def test_wire_and_store_limits_agree() -> None:
    assert MAX_PIECES == cache_layout.MAX_PIECES
    assert MAX_READ == cache_layout.MAX_PIECE_SIZE


def test_parse_address() -> None:
    assert parse_address("[::1]:65002") == ("::1", 65002)
    assert parse_address("10.0.0.1:7") == ("10.0.0.1", 7)
    with pytest.raises(ValueError, match="port"):
        parse_address("10.0.0.1")


@pytest.mark.parametrize("host", HOSTS)
async def test_stat_and_verified_reads(store: PieceStore, host: str) -> None:
    digest, data = await add_blob(store, 3.5, skip=(2,))
    metrics = Metrics("n", "agent")
    sink = io.StringIO()
    async with (
        PeerServer(
            store, SECRET, host=host, node="srv", metrics=metrics, audit=AuditLog(sink)
        ) as server,
        PeerClient(SECRET, node="cli") as client,
    ):
        peer = (host, server.port)
        st = await client.stat(peer, digest)
        assert (st.size, st.piece_size, st.piece_count, st.complete) == (len(data), PIECE, 4, False)
        assert [st.has(i) for i in range(4)] == [True, True, False, True]
        assert (
            st.hashes is not None and st.hashes[1] == sha(pieces(data)[1]) and st.hashes[2] == b""
        )
        buf = bytearray(PIECE)
        got = await client.read(peer, digest, PIECE, PIECE, into=buf, sha256=st.hashes[1])
        assert got.obj is buf and bytes(buf) == pieces(data)[1]
        last = await client.read(peer, digest, 3 * PIECE, PIECE // 2, sha256=st.hashes[3])
        assert bytes(last) == pieces(data)[3]
        span = await client.read(peer, digest, 100, PIECE + 5)  # a byte range over two pieces
        assert bytes(span) == data[100 : PIECE + 105]
        await until(lambda: server.reads == 3)  # the client may see bytes before sendfile returns
        assert "connections: 1" in repr(server)
        assert metrics.meters[MetricType.PEER].count == 2 * PIECE + PIECE // 2 + 5
        log = sink.getvalue()
        assert f"|rpc:stat[pathname={digest}][offset=0][size={len(data)}]" in log
        assert f"|rpc:pread[pathname={digest}][offset={PIECE}][size={PIECE}]" in log


async def test_errors_are_answers_and_the_connection_survives(store: PieceStore) -> None:
    digest, data = await add_blob(store, 3, skip=(1,))
    other = "sha256:" + "0" * 64
    async with (
        PeerServer(store, SECRET, host="127.0.0.1", piece_wait=0.1) as server,
        PeerClient(SECRET) as client,
    ):
        peer = f"127.0.0.1:{server.port}"
        with pytest.raises(PeerRequestError) as missing:
            await client.read(peer, digest, PIECE, PIECE)
        assert missing.value.code is ErrorCode.PIECE_MISSING
        with pytest.raises(PeerRequestError) as unknown:
            await client.stat(peer, other)
        assert unknown.value.code is ErrorCode.NOT_FOUND
        with pytest.raises(PeerRequestError) as beyond:
            await client.read(peer, digest, len(data) - 10, 20)
        assert beyond.value.code is ErrorCode.PIECE_MISSING
        await store.write_piece(digest, 1, pieces(data)[1])
        assert bytes(await client.read(peer, digest, PIECE, PIECE)) == pieces(data)[1]
        conn = await client.connection(peer)
        assert conn.requests == 4 and conn.alive


async def test_cut_through_reads_wait_for_the_piece(store: PieceStore) -> None:
    digest, data = await add_blob(store, 4, skip=(2, 3))
    parts = pieces(data)
    async with (
        PeerServer(store, SECRET, host="127.0.0.1", piece_wait=10) as server,
        PeerClient(SECRET) as client,
    ):
        peer = ("127.0.0.1", server.port)
        started: list[int] = []
        waiting = asyncio.create_task(
            client.read(
                peer,
                digest,
                2 * PIECE,
                PIECE,
                sha256=sha(parts[2]),
                on_start=lambda: started.append(2),
            )
        )
        abandoned = asyncio.create_task(client.read(peer, digest, 3 * PIECE, PIECE))
        await asyncio.sleep(0.1)
        # a queued read does not hold up the others on the same connection
        assert bytes(await client.read(peer, digest, 0, PIECE)) == parts[0]
        assert not waiting.done() and started == []
        await store.write_piece(digest, 2, parts[2])  # lands: served at once
        assert bytes(await asyncio.wait_for(waiting, 5)) == parts[2]
        assert started == [2]
        store.abandon_piece(digest, 3)  # nobody fetches it any more
        with pytest.raises(PeerRequestError) as gave_up:
            await asyncio.wait_for(abandoned, 5)
        assert gave_up.value.code is ErrorCode.PIECE_MISSING


async def test_a_read_may_come_before_the_blob(store: PieceStore) -> None:
    """A child and its parent join a swarm at once: the child's read can reach the
    parent before the parent has created the blob; it waits for it (briefly)."""
    digest, data = make_blob(2, seed=5)
    parts = pieces(data)
    async with (
        PeerServer(store, SECRET, host="127.0.0.1", blob_wait=5) as server,
        PeerClient(SECRET) as client,
    ):
        peer = ("127.0.0.1", server.port)
        early = asyncio.create_task(client.read(peer, digest, 0, PIECE, sha256=sha(parts[0])))
        await asyncio.sleep(0.1)
        await store.create(digest, len(data), piece_size=PIECE)
        await store.write_piece(digest, 0, parts[0])
        assert bytes(await asyncio.wait_for(early, 5)) == parts[0]
    async with (
        PeerServer(store, SECRET, host="127.0.0.1", blob_wait=0.1) as server,
        PeerClient(SECRET) as client,
    ):
        with pytest.raises(PeerRequestError) as unknown:
            await client.read(("127.0.0.1", server.port), "sha256:" + "1" * 64, 0, PIECE)
        assert unknown.value.code is ErrorCode.NOT_FOUND


async def test_a_queued_read_takes_its_buffer_from_the_pool_only_when_bytes_come(
    store: PieceStore,
) -> None:
    digest, data = await add_blob(store, 2, skip=(1,))
    parts = pieces(data)
    pool = BufferPool()
    async with (
        PeerServer(store, SECRET, host="127.0.0.1", piece_wait=10) as server,
        PeerClient(SECRET) as client,
    ):
        peer = ("127.0.0.1", server.port)
        queued = asyncio.create_task(
            client.read(peer, digest, PIECE, PIECE, pool=pool, sha256=sha(parts[1]))
        )
        await until(lambda: any(c.tasks for c in server._connections))
        assert pool.allocated == 0  # waiting at the parent costs no memory
        await store.write_piece(digest, 1, parts[1])
        got = await asyncio.wait_for(queued, 5)
        assert bytes(got) == parts[1] and pool.allocated == 1
        assert isinstance(got.obj, bytearray)
        assert is_aligned(got)  # the store writes it with O_DIRECT as it is
        pool.give(got.obj)
        again = await client.read(peer, digest, 0, PIECE, pool=pool)
        assert bytes(again) == parts[0] and again.obj is got.obj and pool.allocated == 1


async def test_a_cancelled_queued_read_is_never_sent(store: PieceStore) -> None:
    """A child that gives a queued cut-through read up must not cost the parent's uplink
    when the piece lands later; the connection goes on serving."""
    digest, data = await add_blob(store, 3, skip=(1,))
    parts = pieces(data)
    async with (
        PeerServer(store, SECRET, host="127.0.0.1", piece_wait=10) as server,
        PeerClient(SECRET) as client,
    ):
        peer = ("127.0.0.1", server.port)
        queued = asyncio.create_task(client.read(peer, digest, PIECE, PIECE))
        await until(lambda: any(c.tasks for c in server._connections))
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
        await until(lambda: server.reads_cancelled == 1)
        await store.write_piece(digest, 1, parts[1])  # lands after the child gave up
        assert bytes(await client.read(peer, digest, 2 * PIECE, PIECE)) == parts[2]
        assert bytes(await client.read(peer, digest, PIECE, PIECE)) == parts[1]
        conn = await client.connection(peer)
        assert (server.reads, server.bytes_sent, conn.cancelled) == (2, 2 * PIECE, 1)
        assert "1 cancelled" in repr(server)


async def test_a_requester_cancelled_while_connecting_leaves_the_others_alone(
    store: PieceStore,
) -> None:
    """The first read to a peer opens the connection; if that read is cancelled (a
    picker withdrawing it), reads waiting for the same connection must still be served,
    not cancelled with it (their downloads would never hear back)."""
    digest, data = await add_blob(store, 2)
    parts = pieces(data)
    async with (
        PeerServer(store, SECRET, host="127.0.0.1") as server,
        PeerClient(SECRET) as client,
    ):
        peer = ("127.0.0.1", server.port)
        opener = asyncio.create_task(client.read(peer, digest, 0, PIECE))
        waiter = asyncio.create_task(client.read(peer, digest, PIECE, PIECE))
        await asyncio.sleep(0)  # both are waiting for the connection now
        opener.cancel()
        assert bytes(await asyncio.wait_for(waiter, 5)) == parts[1]
        with pytest.raises(asyncio.CancelledError):
            await opener


async def test_multiplexed_reads_on_one_connection(store: PieceStore) -> None:
    digest, data = await add_blob(store, 16)
    parts = pieces(data)
    async with (
        PeerServer(store, SECRET, host="127.0.0.1") as server,
        PeerClient(SECRET, max_in_flight=4) as client,
    ):
        peer = ("127.0.0.1", server.port)
        order = [5, 0, 15, 3, 3, 9, 12, 1, 7, 7, 2, 14, 8, 10, 11, 6, 4, 13]
        results = await asyncio.gather(
            *(client.read(peer, digest, i * PIECE, PIECE, sha256=sha(parts[i])) for i in order)
        )
        assert [bytes(r) for r in results] == [parts[i] for i in order]
        conn = await client.connection(peer)
        assert conn.requests == len(order)
        assert "connections: 1 alive" in repr(client)
        assert "in flight: 0" in repr(conn)


async def test_a_piece_rotten_on_disk_is_never_sent(store: PieceStore) -> None:
    """Bytes flipped on disk after the piece was written and checked: the server hashes
    what it is about to send, drops the piece and answers PIECE_MISSING (the asker goes
    elsewhere); the other piece still goes out."""
    digest, data = await add_blob(store, 2)
    dropped: list[tuple[str, int]] = []
    store.add_drop_listener(lambda d, i: dropped.append((d, i)))
    with (blob_dir(store.path, digest) / "data").open("r+b") as fh:
        fh.seek(PIECE + 10)
        fh.write(b"\x00\x01\x02")
    async with PeerServer(store, SECRET, host="127.0.0.1") as server, PeerClient(SECRET) as client:
        peer = ("127.0.0.1", server.port)
        with pytest.raises(PeerRequestError) as err:
            await client.read(peer, digest, PIECE, PIECE)
        assert err.value.code == ErrorCode.PIECE_MISSING
        got = await client.read(peer, digest, 0, PIECE, sha256=sha(pieces(data)[0]))
        assert bytes(got) == pieces(data)[0]
    assert dropped == [(digest, 1)]
    assert not store.has_piece(digest, 1)


async def test_wrong_secret_is_refused(store: PieceStore, caplog: pytest.LogCaptureFixture) -> None:
    digest, _ = await add_blob(store, 1)
    caplog.set_level(logging.WARNING)
    async with (
        PeerServer(store, SECRET, host="127.0.0.1") as server,
        PeerClient(b"not the cluster secret") as client,
    ):
        with pytest.raises(AuthFailedError):
            await client.stat(("127.0.0.1", server.port), digest)
        for _ in range(50):
            if "failed authentication" in caplog.text and "connections: 0" in repr(server):
                break
            await asyncio.sleep(0.01)
        assert "failed authentication" in caplog.text
        assert server.reads == 0


async def test_unauthenticated_bytes_get_the_connection_closed(
    store: PieceStore, caplog: pytest.LogCaptureFixture
) -> None:
    digest, _ = await add_blob(store, 1)
    caplog.set_level(logging.WARNING)
    async with PeerServer(store, SECRET, host="127.0.0.1", handshake_timeout=5) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            hello = await reader.readexactly(12)
            assert hello[:2] == b"SH"
            stat = digest.encode()
            writer.write(struct.pack("!2sBBII", b"SH", 1, 0x10, 1, 1 + len(stat)) + b"\x47" + stat)
            rest = await asyncio.wait_for(reader.read(), 5)  # EOF: closed on us
            assert b"sha256" not in rest
        finally:
            writer.close()
            await writer.wait_closed()
        assert "not allowed in state HELLO" in caplog.text


async def test_handshake_timeout_closes_silent_peers(store: PieceStore) -> None:
    async with PeerServer(store, SECRET, host="127.0.0.1", handshake_timeout=0.2) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            await asyncio.wait_for(reader.read(), 5)  # hello, then EOF after the timeout
            assert reader.at_eof()
        finally:
            writer.close()
            await writer.wait_closed()


async def test_peer_going_away_fails_requests(store: PieceStore) -> None:
    digest, data = await add_blob(store, 32)
    server = PeerServer(store, SECRET, host="127.0.0.1", throttle_mb=0.01)
    await server.start()
    async with PeerClient(SECRET, request_timeout=5) as client:
        peer = ("127.0.0.1", server.port)
        await client.stat(peer, digest)
        read = asyncio.create_task(client.read(peer, digest, 0, len(data)))
        await asyncio.sleep(0.2)  # the throttle holds it back (256 KiB of debt at 10 KiB/s)
        await server.close()
        with pytest.raises(PeerUnavailableError):
            await read
        with pytest.raises(PeerUnavailableError):
            await client.stat(peer, digest)


async def test_throttled_server_paces_reads(store: PieceStore) -> None:
    digest, data = await add_blob(store, 48)  # 768 KiB
    async with (
        PeerServer(store, SECRET, host="127.0.0.1", throttle_mb=1) as server,
        PeerClient(SECRET) as client,
    ):
        loop = asyncio.get_running_loop()
        start = loop.time()
        got = await client.read(("127.0.0.1", server.port), digest, 0, len(data))
        took = loop.time() - start
    assert bytes(got) == data
    assert 0.4 <= took < 3.0, took  # 512 KiB beyond the 256 KiB burst at 1 MiB/s


async def test_a_trickled_body_of_any_length_arrives_whole(store: PieceStore) -> None:
    """The client wakes per 64 KiB of body (``SO_RCVLOWAT``), not per segment; a body
    whose tail is shorter than that, sent slowly, must still complete at once."""
    digest, data = await add_blob(store, 40)  # 640 KiB
    async with (
        PeerServer(store, SECRET, host="127.0.0.1", throttle_mb=4) as server,
        PeerClient(SECRET) as client,
    ):
        peer = ("127.0.0.1", server.port)
        for offset, length in ((1, len(data) - 3), (7, 70_001), (0, 65_535), (5, 3)):
            got = await asyncio.wait_for(client.read(peer, digest, offset, length), 5)
            assert bytes(got) == data[offset : offset + length]


async def test_a_ping_is_answered_by_body_bytes_below_the_low_water_mark() -> None:
    """While a body arrives the client wakes per 64 KiB; a liveness ping must still see
    the first byte that comes, or a parent on a starved link looks dead. The parent here
    speaks the wire protocol by hand and trickles its answer: 1 KiB every 0.1 s."""

    handlers: list[asyncio.Task[None]] = []

    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handlers.append(asyncio.current_task())  # type: ignore[arg-type]
        conn = Connection(Role.SERVER, SECRET, node="slow")
        try:
            writer.write(conn.data_to_send())
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    return
                conn.receive_data(chunk)
                while not isinstance(event := conn.next_event(), NeedData):
                    if isinstance(event, ReadRequest):
                        writer.write(conn.send(Data(event.request_id, event.length)))
                        for _ in range(event.length // 1024):
                            writer.write(b"x" * 1024)
                            await writer.drain()
                            await asyncio.sleep(0.1)
                        return
                writer.write(conn.data_to_send())
        finally:
            writer.close()

    server = await asyncio.start_server(trickle, "127.0.0.1", 0)
    async with server, PeerClient(SECRET) as client:
        peer = ("127.0.0.1", server.sockets[0].getsockname()[1])
        reading = asyncio.ensure_future(client.read(peer, "sha256:" + "0" * 64, 0, 1 << 20))
        conn = await client.connection(peer)
        await asyncio.sleep(0.3)  # the header is in, the body trickling
        assert conn.conn.body_remaining
        assert await conn.ping(0.5)  # any body byte answers it, 64 KiB would take 6.4 s
        reading.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reading
    for task in handlers:
        task.cancel()
    await asyncio.gather(*handlers, return_exceptions=True)


async def test_pings_share_one_frame_and_a_fresh_byte_answers_without_one() -> None:
    """Every download with a peer as parent probes it; the connection sends one ``Ping``
    for all that ask at once, none when a byte came from the peer in the last
    ``FRESH_S``, and a ping on a connection that closes answers False at once. The peer
    here completes the handshake, then is silent (a stopped process)."""
    from shoal.peer.client import FRESH_S

    handlers: list[asyncio.Task[None]] = []
    closing = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handlers.append(asyncio.current_task())  # type: ignore[arg-type]
        conn = Connection(Role.SERVER, SECRET, node="stopped")
        writer.write(conn.data_to_send())
        conn.receive_data(await reader.read(65536))
        while not isinstance(conn.next_event(), NeedData):
            pass
        writer.write(conn.data_to_send())
        await closing.wait()
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    async with server, PeerClient(SECRET) as client:
        peer = ("127.0.0.1", server.sockets[0].getsockname()[1])
        conn = await client.connection(peer)
        await asyncio.sleep(FRESH_S + 0.05)
        answers = await asyncio.gather(*(client.ping(peer, 0.3) for _ in range(4)))
        assert answers == [False] * 4
        assert conn.pings_sent == 1
        conn.heard = asyncio.get_running_loop().time()  # as if a byte had just come
        assert await client.ping(peer, 0.3)
        assert conn.pings_sent == 1
        await asyncio.sleep(FRESH_S + 0.05)
        pinging = asyncio.ensure_future(conn.ping(5.0))
        await asyncio.sleep(0.05)
        started = asyncio.get_running_loop().time()
        closing.set()  # the peer's side closes: no waiting out the 5 s
        assert not await pinging
        assert asyncio.get_running_loop().time() - started < 1.0
    for task in handlers:
        task.cancel()


async def test_request_timeout_then_connection_still_works(store: PieceStore) -> None:
    digest, data = await add_blob(store, 32)
    async with (
        PeerServer(store, SECRET, host="127.0.0.1", throttle_mb=0.25) as server,
        PeerClient(SECRET, request_timeout=0.3) as client,
    ):
        peer = ("127.0.0.1", server.port)
        with pytest.raises(PeerUnavailableError, match="no answer"):
            await client.read(peer, digest, 0, len(data))
        client.request_timeout = 5  # the late body (about 1 s) arrives and is discarded
        assert bytes(await client.read(peer, digest, 0, 100)) == data[:100]


async def test_client_metrics_and_repr(store: PieceStore) -> None:
    digest, _ = await add_blob(store, 1)
    metrics = Metrics("n", "agent")
    async with PeerServer(store, SECRET, host="127.0.0.1") as server:
        async with PeerClient(SECRET, metrics=metrics) as client:
            await client.read(("127.0.0.1", server.port), digest, 0, PIECE)
            assert f"received {PIECE} bytes" in repr(client)
        assert "connections: 0 alive" in repr(client)
    assert metrics.meters[MetricType.PEER].count == PIECE
    assert "closed" in repr(server)


async def test_copy_path_when_sendfile_is_unavailable(store: PieceStore) -> None:
    """What a loop without sendfile (uvloop) gets: the same bytes, through Python."""
    digest, data = await add_blob(store, 3)
    async with PeerServer(store, SECRET, host="127.0.0.1") as server, PeerClient(SECRET) as client:
        server.sendfile_native = False
        got = await client.read(("127.0.0.1", server.port), digest, 5, 2 * PIECE)
        assert bytes(got) == data[5 : 5 + 2 * PIECE]


async def test_a_piece_held_in_memory_is_served_from_there(tmp_path: Path) -> None:
    """With aioEnable: 1 a piece written by O_DIRECT has no page-cache copy; while the
    store holds the buffer it arrived in, a peer is served from that buffer, not from
    the disk (read on the event loop by sendfile)."""
    digest, data = make_blob(3)
    parts = pieces(data)
    pool = BufferPool()
    async with PieceStore(tmp_path / "aio", capacity=1 << 30, aio=True) as store:
        await store.create(digest, len(data), piece_size=PIECE)
        for i, p in enumerate(parts):
            view = pool.view(len(p))
            view[:] = p
            backing = view.obj
            assert isinstance(backing, bytearray)
            await store.write_piece(digest, i, view, release=functools.partial(pool.give, backing))
        served = store.hot.served
        async with (
            PeerServer(store, SECRET, host="127.0.0.1") as server,
            PeerClient(SECRET) as client,
        ):
            peer = ("127.0.0.1", server.port)
            for i in range(3):
                got = await client.read(peer, digest, i * PIECE, PIECE, sha256=sha(parts[i]))
                assert bytes(got) == parts[i]
        assert store.hot.served > served
