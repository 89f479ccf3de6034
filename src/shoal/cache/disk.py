"""The store's disk threads: blocking file work off the event loop, batched where it can be.

Every read, write, page drop and fsync of the piece store runs here, on threads of its
own (never queued behind hashing work elsewhere in the process). Two things need care:

- **A cancelled caller does not stop a thread.** A write whose caller is cancelled keeps
  running on its thread, reading the caller's buffer; the buffer's ``release`` is then
  called only once the thread is done with it, never before (``write``).
- **Durability in batches.** Nothing is fsynced on the request path. ``sync`` fsyncs the
  journals and metas that changed, all in one job, every ``SYNC_INTERVAL`` seconds and
  at close (see ``journal.py`` for why a crash in between loses no correctness).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from shoal.cache import diskio
from shoal.cache.blob import Blob

T = TypeVar("T")


class DiskThreads:
    def __init__(self, threads: int = 4) -> None:
        #: direct writes wait on the device here, so there are a few
        self.threads = threads
        self._executor: ThreadPoolExecutor | None = None
        #: page drops wait for writeback: on a thread of their own, so that no write
        #: ever queues behind them (a slow disk then only lets the window grow)
        self._pages: ThreadPoolExecutor | None = None

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.threads, thread_name_prefix="shoal-disk")
        return self._executor

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool(), fn, *args)

    def submit_pages(self, fn: Callable[..., object], *args: Any) -> None:
        """Fire and forget on the page-drop thread (nothing waits, errors are theirs)."""
        if self._pages is None:
            self._pages = ThreadPoolExecutor(1, thread_name_prefix="shoal-pages")
        self._pages.submit(fn, *args)

    def submit_result(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        """Start ``fn`` now; the caller awaits the future when it needs the result."""
        return self._pool().submit(fn, *args)

    async def write(
        self, job: tuple[Any, ...], release: Callable[[], None] | None, handed: list[bool]
    ) -> bytes | None:
        """``diskio.check_and_write(*job)``. Cancelled while the thread still works, the
        buffer's ``release`` is moved to the thread's end (``handed[0]`` says so)."""
        loop = asyncio.get_running_loop()
        cfut = self._pool().submit(diskio.check_and_write, *job)
        try:
            return await asyncio.wrap_future(cfut)
        except asyncio.CancelledError:
            if release is not None and not cfut.done():
                handed[0] = True
                cfut.add_done_callback(lambda _: loop.call_soon_threadsafe(release))
            raise

    async def sync(self, blobs: list[Blob]) -> None:
        """fsync what changed of ``blobs`` in one job; pinned meanwhile (never evicted)."""
        dirty = [b for b in blobs if b.dirty]
        if not dirty:
            return
        for blob in dirty:
            blob.pins += 1
        try:
            await self.run(_sync_all, dirty)
        finally:
            for blob in dirty:
                blob.unpin()

    async def close(self) -> None:
        for executor in (self._executor, self._pages):
            if executor is not None:
                await asyncio.to_thread(executor.shutdown)
        self._executor = self._pages = None

    def __repr__(self) -> str:
        return f"<DiskThreads {self.threads} {'idle' if self._executor is None else 'started'}>"


def _sync_all(blobs: list[Blob]) -> None:
    for blob in blobs:
        try:
            blob.sync_files()
        except (OSError, ValueError):
            pass  # removed meanwhile: nothing left to make durable
