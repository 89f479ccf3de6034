"""Kept blobs (``PieceStore.keep``): what a preheat put in the store for a rollout still
to come goes last when room is needed, and the store says when it went anyway."""

from __future__ import annotations

from shoal.cache import PieceStore
from tests.cache.blobs import PIECE, make_blob, pieces
from tests.cache.conftest import StoreFactory


async def _put(store: PieceStore, digest: str, data: bytes) -> None:
    await store.create(digest, len(data), piece_size=PIECE)
    for i, p in enumerate(pieces(data)):
        await store.write_piece(digest, i, p)


async def test_kept_blob_outlives_more_recent_ones_until_nothing_else_makes_room(
    store_factory: StoreFactory,
) -> None:
    evicted: list[str] = []
    async with store_factory(capacity=4 * PIECE) as store:
        store.on_kept_evicted = evicted.append
        kept, other, new, last = (make_blob(2, seed=s) for s in range(4))
        await _put(store, *kept)
        store.keep(kept[0])
        await _put(store, *other)
        await store.read_piece(kept[0], 0)  # kept is the more recent: LRU alone picks other
        await store.read_piece(other[0], 0)  # now other is the more recent one
        await _put(store, *new)
        # plain LRU would have dropped the kept blob (least recently used): other went
        assert store.lookup(kept[0]) is not None
        assert store.lookup(other[0]) is None
        assert store.kept_evicted == 0 and evicted == []
        assert "pinned), 1 kept" in repr(store)
        # only kept and new are left; new is leased: the kept blob has to make the room
        with store.lease(new[0]):
            await _put(store, *last)
        assert store.lookup(kept[0]) is None
        assert store.kept_evicted == 1 and evicted == [kept[0]]
        assert not store.kept(kept[0])


async def test_unkeep_returns_a_blob_to_plain_lru(store_factory: StoreFactory) -> None:
    async with store_factory(capacity=4 * PIECE) as store:
        a, b, c = (make_blob(2, seed=s) for s in range(10, 13))
        await _put(store, *a)
        store.keep(a[0])
        await _put(store, *b)
        store.unkeep(a[0])
        await _put(store, *c)
        assert store.lookup(a[0]) is None  # the least recently used, no longer kept
        assert store.lookup(b[0]) is not None
        assert store.kept_evicted == 0
