from __future__ import annotations

import asyncio
import functools
import io
import random
from pathlib import Path

import pytest

from shoal.cache import (
    BlobConflictError,
    BlobEvictedError,
    CacheFullError,
    PieceCorruptError,
    PieceDroppedError,
    PieceMissingError,
    PieceStore,
)
from shoal.cache.journal import blob_dir
from shoal.errors import BlobUnknownError, DigestMismatchError, ShoalError
from shoal.observability import AuditLog, Metrics, MetricType
from tests.cache.blobs import PIECE, make_blob, pieces, sha
from tests.cache.conftest import StoreFactory


async def test_out_of_order_writes_and_reads_while_incomplete(store: PieceStore) -> None:
    digest, data = make_blob(5.5)
    parts = pieces(data)
    info = await store.create(digest, len(data), piece_size=PIECE)
    assert info.piece_count == 6 and info.piece_length(5) == PIECE // 2
    order = [4, 1, 5, 0, 3, 2]
    for n, i in enumerate(order):
        await store.write_piece(digest, i, parts[i])
        assert set(store.bitfield(digest).indices()) == set(order[: n + 1])
        if n == 2:  # pieces 4, 1, 5 present: a range inside 4..5 reads, one over 3 does not
            got = await store.read_range(digest, 4 * PIECE + 100, PIECE + 50)
            assert got == data[4 * PIECE + 100 : 5 * PIECE + 150]
            with pytest.raises(PieceMissingError):
                await store.read_range(digest, 3 * PIECE, PIECE + 1)
    assert await store.read_piece(digest, 5) == parts[5]
    assert not store.lookup(digest).complete  # type: ignore[union-attr]
    await store.finish(digest)
    info2 = store.lookup(digest)
    assert info2 is not None and info2.complete
    assert info2.hashes == tuple(sha(p) for p in parts)
    assert await store.read_range(digest, 0, len(data)) == data


async def test_known_hashes_refuse_bad_bytes(store: PieceStore) -> None:
    digest, data = make_blob(2)
    parts = pieces(data)
    await store.create(digest, len(data), piece_size=PIECE, hashes=[sha(p) for p in parts])
    bad = bytes([parts[0][0] ^ 1]) + parts[0][1:]
    with pytest.raises(PieceCorruptError):
        await store.write_piece(digest, 0, bad)
    with pytest.raises(PieceCorruptError):  # a caller-computed hash is checked too
        await store.write_piece(digest, 0, parts[0], sha256=sha(bad))
    assert not store.has_piece(digest, 0)
    assert store.used == 0
    await store.write_piece(digest, 0, parts[0], sha256=sha(parts[0]))
    assert store.has_piece(digest, 0)
    with pytest.raises(PieceCorruptError):  # wrong length
        await store.write_piece(digest, 1, parts[1][:-1])


async def test_create_is_idempotent_and_refuses_conflicts(store: PieceStore) -> None:
    digest, data = make_blob(2)
    a = await store.create(digest, len(data), piece_size=PIECE)
    assert await store.create(digest, len(data), piece_size=PIECE) == a
    with pytest.raises(BlobConflictError):
        await store.create(digest, len(data) + 1, piece_size=PIECE)
    with pytest.raises(BlobConflictError):
        await store.create(digest, len(data), piece_size=PIECE, hashes=[b"x" * 32])
    with pytest.raises(ShoalError):
        await store.create("sha256:nothex", 10)
    with pytest.raises(BlobUnknownError):
        await store.read_piece(make_blob(1, seed=9)[0], 0)


async def test_concurrent_readers_follow_a_download(store: PieceStore) -> None:
    digest, data = make_blob(4)
    parts = pieces(data)
    await store.create(digest, len(data), piece_size=PIECE)

    async def stream() -> bytes:
        out = b""
        for i in range(4):
            await store.wait_piece(digest, i)
            out += await store.read_piece(digest, i)
        return out

    readers = [asyncio.create_task(stream()) for _ in range(5)]
    await asyncio.sleep(0)
    for i in range(4):
        await asyncio.sleep(0.001)
        await store.write_piece(digest, i, parts[i])
    assert await asyncio.gather(*readers) == [data] * 5
    many = await asyncio.gather(*(store.read_range(digest, i * 1000, 5000) for i in range(20)))
    assert many == [data[i * 1000 : i * 1000 + 5000] for i in range(20)]


async def test_waiters_fail_when_blob_goes(store: PieceStore) -> None:
    digest, data = make_blob(2)
    await store.create(digest, len(data), piece_size=PIECE)
    waiter = asyncio.create_task(store.wait_piece(digest, 1))
    await asyncio.sleep(0)
    await store.remove(digest)
    with pytest.raises(BlobEvictedError):
        await waiter
    assert store.lookup(digest) is None


async def test_eviction_is_lru_and_spares_leased_blobs(store_factory: StoreFactory) -> None:
    """A new blob must fit whole before a byte of it is fetched: idle blobs make room,
    least recently used first; with nothing evictable ``create`` refuses it at once."""
    async with store_factory(capacity=4 * PIECE) as store:
        blobs = [make_blob(2, seed=s) for s in range(4)]
        for digest, data in blobs[:2]:
            await store.create(digest, len(data), piece_size=PIECE)
            for i, p in enumerate(pieces(data)):
                await store.write_piece(digest, i, p)
            await store.finish(digest)
        assert store.used == 4 * PIECE
        await store.read_piece(blobs[0][0], 0)  # blob 0 is now the most recent
        d2, data2 = blobs[2]
        await store.create(d2, len(data2), piece_size=PIECE)
        assert store.lookup(blobs[1][0]) is None, "least recently used goes first"
        assert not blob_dir(store.path, blobs[1][0]).exists()
        assert store.lookup(blobs[0][0]) is not None
        assert store.used == 2 * PIECE
        for i, p in enumerate(pieces(data2)):
            await store.write_piece(d2, i, p)
        await store.finish(d2)
        d3, data3 = blobs[3]
        with store.lease(blobs[0][0]), store.lease(d2), pytest.raises(CacheFullError):
            await store.create(d3, len(data3), piece_size=PIECE)
        assert store.lookup(blobs[0][0]) is not None and store.lookup(d2) is not None
        await store.create(d3, len(data3), piece_size=PIECE)  # leases gone: blob 0 goes
        assert store.lookup(blobs[0][0]) is None
        assert store.lookup(d2) is not None
        await store.write_piece(d3, 0, pieces(data3)[0])
        assert store.used <= store.capacity


async def test_an_idle_partial_blob_goes_before_a_complete_one(
    store_factory: StoreFactory,
) -> None:
    async with store_factory(capacity=4 * PIECE) as store:
        partial, pdata = make_blob(2, seed=1)
        whole, wdata = make_blob(2, seed=2)
        await store.create(whole, len(wdata), piece_size=PIECE)
        for i, p in enumerate(pieces(wdata)):
            await store.write_piece(whole, i, p)
        await store.finish(whole)
        await store.create(partial, len(pdata), piece_size=PIECE)
        await store.write_piece(partial, 0, pieces(pdata)[0])  # then its download stopped
        new, ndata = make_blob(2, seed=3)
        await store.create(new, len(ndata), piece_size=PIECE)
        assert store.lookup(partial) is None, "a stopped download goes first"
        assert store.lookup(whole) is not None


async def test_restart_keeps_index_and_drops_corrupt_piece(store_factory: StoreFactory) -> None:
    digest, data = make_blob(3)
    parts = pieces(data)
    store = store_factory()
    await store.open()
    await store.create(digest, len(data), piece_size=PIECE)
    for i, p in enumerate(parts):
        await store.write_piece(digest, i, p)
    await store.finish(digest)
    path = store.path
    await store.close()
    # a crash: piece 1's bytes differ from what the journal says, and a torn record
    directory = blob_dir(path, digest)
    with (directory / "data").open("r+b") as fh:
        fh.seek(PIECE + 7)
        fh.write(b"\xff\x00\xff")
    with (directory / "journal").open("ab") as fh:
        fh.write(b"torn")
    async with store_factory(path) as again:
        info = again.lookup(digest)
        assert info is not None and info.complete and info.present_count == 3
        assert again.used == 3 * PIECE
        assert await again.read_piece(digest, 0) == parts[0]
        with pytest.raises(PieceMissingError):
            await again.read_piece(digest, 1)
        assert not again.has_piece(digest, 1)
        assert again.used == 2 * PIECE
        assert not again.lookup(digest).complete  # type: ignore[union-attr]
        await again.write_piece(digest, 1, parts[1])
        await again.finish(digest)
    async with store_factory(path) as third:
        assert await third.read_range(digest, 0, len(data)) == data


async def test_unreadable_blob_dir_is_dropped_at_start(store_factory: StoreFactory) -> None:
    digest, data = make_blob(1)
    async with store_factory() as store:
        await store.create(digest, len(data), piece_size=PIECE)
        directory = blob_dir(store.path, digest)
    (directory / "meta.json").write_text("{not json")
    async with store_factory() as again:
        assert again.lookup(digest) is None
        assert not directory.exists()


async def test_finish_checks_the_whole_digest(store: PieceStore) -> None:
    _, data = make_blob(2)
    wrong = make_blob(2, seed=1)[0]
    await store.create(wrong, len(data), piece_size=PIECE)
    for i, p in enumerate(pieces(data)):
        await store.write_piece(wrong, i, p)
    with pytest.raises(DigestMismatchError):
        await store.finish(wrong)
    assert store.lookup(wrong) is None
    assert store.used == 0


async def test_metrics_audit_and_repr(store_factory: StoreFactory, tmp_path: Path) -> None:
    metrics = Metrics("127.0.0.1:65002", "agent")
    sink = io.StringIO()
    meter = functools.partial(metrics.record, MetricType.DISK)
    async with store_factory(capacity=10 * PIECE, disk_meter=meter, audit=AuditLog(sink)) as store:
        metrics.set_cache_source(store.usage)
        digest, data = make_blob(1.5)
        await store.create(digest, len(data), piece_size=PIECE)
        await store.write_piece(digest, 1, pieces(data)[1])
        await store.read_piece(digest, 1)
        text = metrics.render()
        assert f'type="allocated",mode="agent"}} {float(10 * PIECE):f}' in text
        assert f'type="used",mode="agent"}} {float(PIECE // 2):f}' in text
        assert metrics.meters[MetricType.DISK].count == PIECE  # written half + read half
        lines = sink.getvalue().splitlines()
        assert any(f"|filewrite[pathname={digest}][offset={PIECE}]" in ln for ln in lines)
        assert any(
            f"|fileread[pathname={digest}][offset={PIECE}][size={PIECE // 2}]" in ln for ln in lines
        )
        assert "blobs: 1 (0 complete, 1 partial, 0 pinned)" in repr(store)
        assert f"used {PIECE // 2} / {10 * PIECE}" in repr(store)


async def test_thread_io_strategy_gives_same_bytes(store_factory: StoreFactory) -> None:
    digest, data = make_blob(3.25, seed=4)
    async with store_factory(aio=True) as store:
        await store.create(digest, len(data), piece_size=PIECE)
        order = list(range(4))
        random.Random(1).shuffle(order)
        await asyncio.gather(*(store.write_piece(digest, i, pieces(data)[i]) for i in order))
        await store.finish(digest)
        assert await store.read_range(digest, 0, len(data)) == data


async def test_empty_blob_completes(store: PieceStore) -> None:
    empty = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    info = await store.create(empty, 0)
    assert info.piece_count == 0
    await store.finish(empty)
    assert store.lookup(empty).complete  # type: ignore[union-attr]
    assert await store.read_range(empty, 0, 0) == b""


async def test_unhashed_pieces_are_vouched_for_by_the_whole_digest(
    store_factory: StoreFactory,
) -> None:
    """An agent's own origin fetch stores pieces without hashes of their own: after a
    restart a complete blob is re-hashed whole before any piece is served (a corrupt
    one goes, nothing tells which piece is bad), its piece hashes are journalled from
    then on (a later rotten piece is dropped alone), and an incomplete one's unhashed
    pieces are not trusted at all."""
    digest, data = make_blob(3)
    rotten, rdata = make_blob(3, seed=5)
    partial, pdata = make_blob(3, seed=7)
    async with store_factory() as store:
        for d, blob, n in ((digest, data, 3), (rotten, rdata, 3), (partial, pdata, 2)):
            await store.create(d, len(blob), piece_size=PIECE)
            for i, p in enumerate(pieces(blob)[:n]):
                assert await store.write_piece(d, i, p, hashed=False) == b""
        await store.finish(digest)
        await store.finish(rotten)
        assert store.lookup(digest).hashes == (None, None, None)  # type: ignore[union-attr]
        path = store.path
    with (blob_dir(path, rotten) / "data").open("r+b") as fh:
        fh.seek(2 * PIECE + 5)
        fh.write(b"\x00\xff")
    async with store_factory(path) as again:
        assert again.lookup(partial).present_count == 0  # type: ignore[union-attr]
        assert await again.read_range(digest, PIECE, 10) == data[PIECE : PIECE + 10]
        with pytest.raises(BlobEvictedError):
            await again.read_range(rotten, 0, 10)
        assert again.lookup(rotten) is None
    with (blob_dir(path, digest) / "data").open("r+b") as fh:
        fh.seek(2 * PIECE + 5)
        fh.write(b"\x00\xff")
    async with store_factory(path) as third:
        assert await third.read_range(digest, 0, 10) == data[:10]
        with pytest.raises(PieceDroppedError):
            await third.read_range(digest, 2 * PIECE, 10)
        assert not third.has_piece(digest, 2)
        assert third.has_piece(digest, 1)
