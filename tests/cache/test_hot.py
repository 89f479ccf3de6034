"""Pieces served from where they landed: buffers handed over, page-cache window, events."""

from __future__ import annotations

import asyncio
import functools
import os
from pathlib import Path

import pytest

from shoal.cache import BlobEvictedError, BufferPool, PieceCorruptError, PieceStore
from shoal.cache.buffers import is_aligned
from shoal.cache.diskio import open_direct, write_direct
from shoal.cache.hot import HotPieces
from tests.cache.blobs import PIECE, make_blob, pieces, sha
from tests.cache.conftest import StoreFactory


def test_pool_views_are_page_aligned_and_come_back() -> None:
    pool = BufferPool()
    views = [pool.view(PIECE) for _ in range(3)]
    assert all(is_aligned(v) and len(v) == PIECE for v in views)
    backing = views[0].obj
    assert isinstance(backing, bytearray)
    pool.give(backing)
    again = pool.view(PIECE)
    assert again.obj is backing and is_aligned(again)
    assert pool.allocated == 3


def test_aligned_views_are_written_direct_without_a_scratch_copy(tmp_path: Path) -> None:
    from shoal.cache import diskio

    path = tmp_path / "data"
    path.write_bytes(bytes(2 * PIECE))
    fd = os.open(path, os.O_RDWR)
    direct = open_direct(path)
    if direct < 0:
        os.close(fd)
        pytest.skip("no O_DIRECT on this file system")
    try:
        view = BufferPool().view(PIECE)
        view[:] = make_blob(1)[1]
        diskio._scratch.__dict__.pop("buf", None)
        write_direct(fd, direct, PIECE, view)
        assert getattr(diskio._scratch, "buf", None) is None, "no scratch buffer was needed"
        assert path.read_bytes()[PIECE:] == bytes(view)
    finally:
        os.close(fd)
        os.close(direct)


def test_hot_set_keeps_the_newest_and_never_releases_under_a_reader() -> None:
    released: list[int] = []
    hot = HotPieces(limit=2 * PIECE)
    bufs = [memoryview(bytearray(PIECE)) for _ in range(3)]
    hot.keep(("d", 0), bufs[0], lambda: released.append(0))
    with hot.pinned(("d", 0)) as entry:
        assert entry is not None and entry.view is bufs[0] and entry.filled == PIECE
        hot.keep(("d", 1), bufs[1], lambda: released.append(1))
        hot.keep(("d", 2), bufs[2], lambda: released.append(2))  # piece 0 leaves the set
        assert released == []  # ... but is being sent from
        with hot.pinned(("d", 0)) as gone:
            assert gone is None
    assert released == [0]
    hot.drop_blob("d")
    assert sorted(released) == [0, 1, 2]
    assert hot.bytes == 0


@pytest.mark.parametrize("aio", [False, True])
async def test_a_handed_over_buffer_is_served_and_released_exactly_once(
    store_factory: StoreFactory, aio: bool
) -> None:
    digest, data = make_blob(3)
    parts = pieces(data)
    released: list[int] = []
    async with store_factory(aio=aio, hot_bytes=2 * PIECE) as store:
        await store.create(digest, len(data), piece_size=PIECE, hashes=[sha(p) for p in parts])
        for i, p in enumerate(parts):
            buf = memoryview(bytearray(p))
            await store.write_piece(digest, i, buf, release=functools.partial(released.append, i))
        with store.piece_buffer(digest, 2) as hot:
            if aio:  # no page-cache copy: the store serves it from memory
                assert hot is not None and bytes(hot.view) == parts[2]
            else:  # the page-cache window holds it: the buffer went back at once
                assert hot is None
        assert released == ([0] if aio else [0, 1, 2])
        bad = memoryview(bytearray(parts[0]))
        bad[0] ^= 1
        other, odata = make_blob(1, seed=5)
        await store.create(other, len(odata), piece_size=PIECE, hashes=[sha(odata)])
        with pytest.raises(PieceCorruptError):
            await store.write_piece(other, 0, bad, release=lambda: released.append(99))
        assert released[-1] == 99
        await store.remove(digest)
        assert sorted(released) == [0, 1, 2, 99]
        assert await store.read_range(other, 0, 0) == b""


async def test_pieces_beyond_the_page_window_read_back_intact(store_factory: StoreFactory) -> None:
    digest, data = make_blob(40, seed=3)
    big = 8 * PIECE  # above INLINE_PIECE: written on a disk thread, through the window
    async with store_factory(page_window=2 * big) as store:
        await store.create(digest, len(data), piece_size=big)
        for i, p in enumerate(pieces(data, big)):
            await store.write_piece(digest, i, p)
        await store.finish(digest)
        assert store.window.dropped > 0
        assert await store.read_range(digest, 0, len(data)) == data


async def test_completion_is_an_event_and_a_failed_download_wakes_its_waiters(
    store: PieceStore,
) -> None:
    digest, data = make_blob(2)
    await store.create(digest, len(data), piece_size=PIECE)
    waiter = asyncio.create_task(store.wait_complete(digest))
    for i, p in enumerate(pieces(data)):
        await store.write_piece(digest, i, p)
    await asyncio.sleep(0)
    assert not waiter.done()
    await store.finish(digest)
    await asyncio.wait_for(waiter, 1)
    await store.wait_complete(digest)  # already complete: at once
    other, odata = make_blob(2, seed=1)
    await store.create(other, len(odata), piece_size=PIECE)
    failing = asyncio.create_task(store.wait_complete(other))
    await asyncio.sleep(0)
    await store.remove(other)
    with pytest.raises(BlobEvictedError):
        await failing


async def test_metas_are_synced_in_a_batch_not_per_blob(store_factory: StoreFactory) -> None:
    async with store_factory() as store:
        blobs = [make_blob(1, seed=s) for s in range(3)]
        for digest, data in blobs:
            await store.create(digest, len(data), piece_size=PIECE)
        assert all(store._blobs[d].dirty for d, _ in blobs)
        await store.sync()
        assert not any(store._blobs[d].dirty for d, _ in blobs)
        await store.write_piece(blobs[0][0], 0, blobs[0][1])
        assert store._blobs[blobs[0][0]].dirty
    async with store_factory() as again:  # closing synced the rest; the index is whole
        assert again.has_piece(blobs[0][0], 0)


def test_a_fetch_grows_only_its_own_staged_buffer() -> None:
    """Two fetches of one piece (two parents at the end of a download): the second
    stages its own buffer; the first one's progress must not claim bytes of the second
    buffer that have not arrived (a reader would send them: whatever the pool left)."""
    hot = HotPieces(1 << 20)
    first, second = memoryview(bytearray(PIECE)), memoryview(bytearray(PIECE))
    hot.keep(("d", 0), first, None, filled=0, staged=True)
    hot.keep(("d", 0), second, None, filled=4096, staged=True)
    hot.grow(("d", 0), PIECE, first)  # the first fetch goes on arriving
    entry = hot.peek(("d", 0))
    assert entry is not None and entry.view is second and entry.filled == 4096
    hot.grow(("d", 0), 8192, second)
    assert entry.filled == 8192
