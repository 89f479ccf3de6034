"""A download that ends gives every piece buffer it holds back to the pool once.

A buffer given back twice is handed to two later fetches, which then fill the same
memory: a piece verified chunk by chunk is overwritten by another's bytes after its
check, and the runtime is served a blob that fails its digest (seen in
``shoal bench -n 32 --queue-ms 5``: one node in 32, skopeo "Digest did not match").
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

from shoal.agent.download import DownloadDriver, DownloadHost
from shoal.agent.passon import PassOn, store_piece
from shoal.cache import BufferPool, PieceStore
from shoal.config import Config
from shoal.oci.digest import parse_digest
from shoal.registry.origin_fetch import Source
from shoal.swarm.messages import Cancel

DIGEST = "sha256:" + "ab" * 32
PIECE = 64 << 10


@contextlib.asynccontextmanager
async def _opened(tmp_path: Path) -> AsyncIterator[tuple[BufferPool, PieceStore]]:
    """A buffer pool and an open, empty piece store."""
    store = PieceStore(tmp_path / "store", capacity=1 << 30)
    await store.open()
    try:
        yield BufferPool(), store
    finally:
        await store.close()


def _driver(store: PieceStore, pool: BufferPool) -> DownloadDriver:
    host: Any = SimpleNamespace(
        config=Config(), store=store, buffers=pool, peer_id="10.0.0.1:65002",
        roots_for=lambda digest: ["10.0.0.9:65001"],
    )  # fmt: skip
    source = Source("registry.example", "app", "")
    return DownloadDriver(cast(DownloadHost, host), parse_digest(DIGEST), source, wanted=1)


def test_a_fetch_received_but_not_stored_gives_its_buffer_back_once(tmp_path: Path) -> None:
    async def main() -> None:
        async with _opened(tmp_path) as (pool, store):
            driver = _driver(store, pool)
            # what a fetch leaves when the download ends between its answer and its
            # store task: its pass-on and its received bytes, one buffer
            data = pool.view(PIECE)
            po = PassOn(store, pool, DIGEST, 0, "10.0.0.2:65002")
            po.check.attach(data)
            driver._received[("10.0.0.2:65002", 0)] = (data, po)
            driver._let_go_all()
            assert pool.double_gives == 0
            first, second = pool.view(PIECE), pool.view(PIECE)
            assert first.obj is data.obj  # back in the pool ...
            assert second.obj is not first.obj  # ... once

    asyncio.run(main())


def test_a_cancelled_fetch_keeps_its_buffer_until_its_read_is_unwound(tmp_path: Path) -> None:
    """The picker cancels a read whose body is arriving: until the read's task has
    ended, the connection may still fill the buffer, so it is not back in the pool."""

    async def main() -> None:
        async with _opened(tmp_path) as (pool, store):
            driver = _driver(store, pool)
            parent = "10.0.0.2:65002"
            data = pool.view(PIECE)
            po = PassOn(store, pool, DIGEST, 0, parent)
            po.check.attach(data)
            driver._passing[(parent, 0)] = po
            reading = asyncio.get_running_loop().create_future()

            async def fetch() -> None:  # a read in the middle of its body
                try:
                    await reading
                except asyncio.CancelledError:
                    po.abandon()  # what ``_fetch`` does once unwound
                    raise

            task = asyncio.create_task(fetch())
            driver._fetches[(parent, 0)] = task
            await asyncio.sleep(0)
            driver._apply([Cancel(parent, 0)])
            assert pool.view(PIECE).obj is not data.obj  # still the connection's
            await asyncio.gather(task, return_exceptions=True)
            assert pool.view(PIECE).obj is data.obj  # back once the read ended
            assert pool.double_gives == 0

    asyncio.run(main())


def test_a_staged_piece_whose_write_is_cancelled_keeps_its_buffer_until_the_write_ends(
    tmp_path: Path, monkeypatch: Any
) -> None:
    """The download ends while a disk thread writes a staged piece: the store task is
    cancelled, but the thread still reads the buffer; handed on meanwhile, another
    fetch's bytes would be written over the piece."""
    from shoal.cache import diskio

    size = 256 << 10
    gate, entered = threading.Event(), threading.Event()
    real = diskio.check_and_write

    def slow(*job: Any) -> Any:
        entered.set()
        gate.wait(10)
        return real(*job)

    monkeypatch.setattr(diskio, "check_and_write", slow)

    async def main() -> None:
        async with _opened(tmp_path) as (pool, store):
            body = bytes(range(256)) * (size // 256)
            digest = "sha256:" + hashlib.sha256(body).hexdigest()
            await store.create(digest, size, piece_size=size)
            data = pool.view(size)
            data[:] = body
            po = PassOn(store, pool, digest, 0, "10.0.0.2:65002")
            po.check.attach(data)
            po.check.know(b"".join(hashlib.sha256(body[i : i + (64 << 10)]).digest()
                                   for i in range(0, size, 64 << 10)))  # fmt: skip
            po.check.arrived(size)
            assert po.staged
            piece = hashlib.sha256(body).digest()
            task = asyncio.create_task(
                store_piece(store, digest, 0, data, piece, po, lambda d: None)
            )
            await asyncio.to_thread(entered.wait, 10)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            assert pool.view(size).obj is not data.obj  # the thread still reads it
            gate.set()
            for _ in range(100):
                await asyncio.sleep(0.01)
                if pool._idle_bytes:
                    break
            assert pool.view(size).obj is data.obj  # back once the write ended
            assert pool.double_gives == 0

    try:
        asyncio.run(main())
    finally:
        gate.set()  # a failed assertion must not leave the disk thread waiting


def test_the_pool_never_hands_out_a_buffer_given_back_twice() -> None:
    pool = BufferPool()
    view = pool.view(PIECE)
    assert isinstance(view.obj, bytearray)
    pool.give(view.obj)
    pool.give(view.obj)
    assert pool.double_gives == 1
    assert pool.view(PIECE).obj is not pool.view(PIECE).obj
