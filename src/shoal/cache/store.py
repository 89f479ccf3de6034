"""The piece store: blobs on disk by digest, cut into pieces, verified piece by piece.

Design decisions:

- **One sparse data file per blob**, pieces written at their offsets in any order. A
  piece is *present* once its bytes are written and its sha256 recorded in the blob's
  journal (``journal.py``); only present pieces are ever read or served.
- **Checked on every read from disk** (``integrity.py``). A piece is sent only from
  where its bytes are known good: its buffer in memory, or the page cache while it is
  fresh (written or re-hashed within the newest ``PAGE_WINDOW`` bytes); otherwise it
  is hashed against its piece hash first, and dropped (to be fetched again) if it no
  longer matches. A data file deleted, truncated or written by someone else is caught
  by an ``fstat`` per read. Start-up costs O(index), not O(bytes).
- **Capacity counts present piece bytes** (plus bytes being written), never the sparse
  holes. When a write would exceed it, whole blobs are evicted least-recently-used
  first; a blob with a lease (``lease()``) or an operation in progress is never chosen.
  Recency is a counter bumped on every access (no clock), seeded from journal mtimes at
  start. A *kept* blob (``keep()``: a preheat put it here for a rollout still to come)
  goes only when no other blob can make the room, and the store counts it
  (``kept_evicted``, ``on_kept_evicted``) so the loss is said in a metric, not silent.
- **Errors are per piece.** ENOSPC, EIO and friends become ``DiskFullError`` /
  ``PieceWriteError`` / ``PieceReadError`` for that call; the store stays usable.
- **No disk I/O and no hashing of big pieces on the event loop**: both run on the
  store's disk threads (hashlib releases the GIL on large buffers, so hashing overlaps
  socket work on the other core). Pieces up to ``INLINE_PIECE`` bytes (a config blob, a
  blob's tail) are hashed and written in line: a thread hop costs more than they do.
  ``aio`` (``aioEnable``) picks how pieces are written: through a bounded page-cache
  window, or ``O_DIRECT`` — see ``diskio.py`` for what was measured and why.
- **The newest pieces stay hot** (``hot.py``): a writer that hands its verified buffer
  over (``write_piece(release=)``) lets readers send it from memory
  (``piece_buffer``) instead of reading it back from disk.
- **No fsync on the request path**: creating a blob writes its meta without fsync, and
  what changed is fsynced in one batch every ``SYNC_INTERVAL`` seconds on a disk thread.
- **Followers wait on events, never poll**: ``wait_piece`` so a streaming reader can
  follow a download in progress and a peer can serve pieces of a blob still
  downloading, ``wait_complete`` for the whole-digest check, ``wait_blob`` for a blob
  to be created.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from shoal.cache import diskio
from shoal.cache import journal as jr
from shoal.cache.bitfield import Bitfield
from shoal.cache.blob import AuditSink, Blob, BlobInfo, FileRange, load_blob, write_error
from shoal.cache.disk import DiskThreads
from shoal.cache.errors import (
    BlobConflictError,
    BlobEvictedError,
    CacheFullError,
    DiskFullError,
    PieceCorruptError,
    PieceMissingError,
    PieceReadError,
)
from shoal.cache.following import Following
from shoal.cache.hot import HotPieces, PageWindow
from shoal.cache.integrity import DropListener, Integrity
from shoal.cache.layout import (
    HASH_SIZE,
    check_digest,
    check_geometry,
    choose_piece_size,
    pieces_of_range,
)
from shoal.cache.room import Room
from shoal.config import CacheConfig
from shoal.errors import DigestMismatchError

log = logging.getLogger(__name__)

T = TypeVar("T")
PieceListener = Callable[[str, int], None]
#: ``disk_meter(nbytes, latency_s)`` per disk read/write: the ``disk`` metrics type
DiskMeter = Callable[[int, float], None]
#: audit op codes of the reference system
FILEWRITE = "filewrite"
FILEREAD = "fileread"
#: pieces up to this size are hashed and written on the event loop (cheaper than a hop)
INLINE_PIECE = 64 << 10
#: seconds between batched fsyncs of the journals and metas that changed
SYNC_INTERVAL = 5.0
#: bytes of verified piece buffers kept in memory for readers (``aioEnable: 1``, where
#: no page-cache copy exists; see ``hot.py``); a buffer being sent stays beyond it
HOT_BYTES = 8 << 20
#: bytes of the newest buffered writes kept in the page cache (``aioEnable: 0``)
PAGE_WINDOW = 16 << 20


class PieceStore(Following, Integrity, Room):
    def __init__(
        self,
        path: str | Path,
        *,
        capacity: int,
        aio: bool = False,
        piece_size: int = 0,
        disk_meter: DiskMeter | None = None,
        audit: AuditSink | None = None,
        hot_bytes: int = HOT_BYTES,
        page_window: int = PAGE_WINDOW,
    ) -> None:
        self.path = Path(path)
        self.capacity = capacity
        self.aio = aio
        self.default_piece_size = piece_size
        self._meter = disk_meter
        self._audit = audit
        self._blobs: dict[str, Blob] = {}
        self._used = 0
        self._reserved = 0
        self._tick = 0
        self._listeners: list[PieceListener] = []
        self._drop_listeners: list[DropListener] = []
        self._stamp = 0
        #: blobs someone waits to see created: (event, [number of waiters])
        self._blob_waiters: dict[str, tuple[asyncio.Event, list[int]]] = {}
        #: threads doing blocking reads, writes, page drops and fsyncs
        self.disk = DiskThreads(4)
        self._opened = False
        self.hot = HotPieces(hot_bytes)
        self.window = PageWindow(page_window)
        self._syncer: asyncio.Task[None] | None = None
        #: blobs kept for someone who asked (``keep``): evicted last
        self._kept: set[str] = set()
        #: kept blobs evicted for room anyway, since start
        self.kept_evicted = 0
        #: called with the digest of a kept blob evicted for room
        self.on_kept_evicted: Callable[[str], None] | None = None

    @classmethod
    def from_config(
        cls,
        config: CacheConfig,
        *,
        disk_meter: DiskMeter | None = None,
        audit: AuditSink | None = None,
    ) -> PieceStore:
        return cls(
            config.path,
            capacity=config.capacity,
            aio=config.aio,
            piece_size=config.piece_size,
            disk_meter=disk_meter,
            audit=audit,
        )

    # -- lifecycle -----------------------------------------------------------------

    async def __aenter__(self) -> PieceStore:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def open(self) -> None:
        """Load the index from disk; blobs whose meta is unreadable are removed."""
        self.path.mkdir(parents=True, exist_ok=True)
        found = await asyncio.to_thread(self._scan)
        found.sort(key=lambda item: item[0])
        for _, blob in found:
            self._tick += 1
            blob.last_used = self._tick
            self._blobs[blob.digest] = blob
            self._used += blob.used
        self._opened = True
        self._syncer = asyncio.create_task(self._sync_loop())
        log.info("piece store opened: %r", self)

    def _scan(self) -> list[tuple[float, Blob]]:
        root = self.path / "blobs" / "sha256"
        if not root.is_dir():
            return []
        found: list[tuple[float, Blob]] = []
        for directory in root.iterdir():
            try:
                blob = load_blob(directory)
            except (ValueError, OSError) as exc:
                log.warning("dropping unreadable blob %s: %s", directory.name, exc)
                shutil.rmtree(directory, ignore_errors=True)
                continue
            try:
                stamp = (directory / "journal").stat().st_mtime
            except FileNotFoundError:
                stamp = 0.0
            found.append((stamp, blob))
        return found

    async def close(self) -> None:
        if self._syncer is not None:
            self._syncer.cancel()
            await asyncio.gather(self._syncer, return_exceptions=True)
            self._syncer = None
        if self._opened:
            await self.sync()
        self.hot.clear()
        for blob in self._blobs.values():
            blob.fail_waiters(BlobEvictedError(f"store closed: {blob.digest}"))
            blob.close_files()
        self._blobs.clear()
        self._used = 0
        self._opened = False
        await self.disk.close()

    # -- queries -------------------------------------------------------------------

    @property
    def used(self) -> int:
        """Bytes of present pieces (shoal's own data on disk)."""
        return self._used

    def usage(self) -> tuple[int, int]:
        """(allocated, used) bytes, for ``Metrics.set_cache_source`` (``DADIP2P_Cache``)."""
        return self.capacity, self._used

    def lookup(self, digest: str) -> BlobInfo | None:
        blob = self._blobs.get(digest)
        return None if blob is None else blob.info()

    def has_piece(self, digest: str, index: int) -> bool:
        blob = self._blobs.get(digest)
        return blob is not None and blob.present[index]

    def bitfield(self, digest: str) -> Bitfield:
        """A copy of the blob's present-pieces bitfield."""
        return self._get(digest).present.copy()

    def digests(self) -> list[str]:
        return list(self._blobs)

    def add_listener(self, listener: PieceListener) -> None:
        """``listener(digest, index)`` is called whenever a piece becomes present."""
        self._listeners.append(listener)

    # -- leases --------------------------------------------------------------------

    @contextmanager
    def lease(self, digest: str) -> Iterator[BlobInfo]:
        """Pin the blob against eviction for the duration (a download, a stream, a send)."""
        blob = self._get(digest)
        blob.pins += 1
        self._touch(blob)
        try:
            yield blob.info()
        finally:
            blob.unpin()

    # -- keeping (soft pins) -------------------------------------------------------

    def keep(self, digest: str) -> None:
        """Prefer every other blob when room is needed. Not a lease: a kept blob still
        goes when nothing else can make the room (the caller learns it through
        ``on_kept_evicted``). Whoever keeps a blob says when to stop (``unkeep``); the
        store has no clock. A digest not (yet) in the store may be kept too."""
        self._kept.add(digest)

    def unkeep(self, digest: str) -> None:
        self._kept.discard(digest)

    def kept(self, digest: str) -> bool:
        return digest in self._kept

    # -- writing -------------------------------------------------------------------

    async def create(
        self,
        digest: str,
        size: int,
        *,
        piece_size: int = 0,
        hashes: Sequence[bytes] | None = None,
    ) -> BlobInfo:
        """Create the blob's record, or return the existing one if it agrees.

        ``hashes`` are the pieces' sha256 values when known (from the root); every piece
        written later is then checked against them.
        """
        check_digest(digest)
        piece_size = piece_size or choose_piece_size(size, self.default_piece_size)
        try:
            check_geometry(size, piece_size)
        except ValueError as exc:
            raise BlobConflictError(f"{digest}: {exc}") from exc
        existing = self._blobs.get(digest)
        if existing is not None:
            if (existing.size, existing.piece_size) != (size, piece_size):
                raise BlobConflictError(
                    f"{digest}: exists with size {existing.size} piece {existing.piece_size}"
                )
            if hashes is not None:
                existing.adopt_hashes(hashes)
            self._touch(existing)
            return existing.info()
        self._make_room(digest, size)
        count = (size + piece_size - 1) // piece_size
        if hashes is not None and (
            len(hashes) != count or any(len(h) != HASH_SIZE for h in hashes)
        ):
            raise BlobConflictError(f"{digest}: {len(hashes)} hashes for {count} pieces")
        directory = jr.blob_dir(self.path, digest)
        meta = jr.BlobMeta(
            version=jr.META_VERSION,
            digest=digest,
            size=size,
            piece_size=piece_size,
            hashes=None if hashes is None else [h.hex() for h in hashes],
        )
        blob = Blob.load(directory, meta, [])
        # the files are made on a disk thread while the caller goes on (its bytes are on
        # their way: a cold blob's first write waits for them, nothing before it does);
        # no fsync (batched by ``sync``). In line this took 1.0 ms per blob here.
        blob.creating = asyncio.wrap_future(self.disk.submit_result(blob.make_files, meta))
        blob.creating.add_done_callback(_retrieved)
        blob.dirty = True
        self._blobs[digest] = blob
        self._touch(blob)
        waiting = self._blob_waiters.pop(digest, None)
        if waiting is not None:
            waiting[0].set()
        return blob.info()

    async def write_piece(
        self,
        digest: str,
        index: int,
        data: bytes | bytearray | memoryview,
        *,
        sha256: bytes | None = None,
        expect: bytes | None = None,
        release: Callable[[], None] | None = None,
        hashed: bool = True,
    ) -> bytes:
        """Store piece ``index``; return its sha256 (``b""`` if it has none).

        ``expect`` is the hash the piece must have (a downloader's hash from the root):
        the bytes are hashed and checked on the disk thread that writes them.

        ``sha256`` is the hash of ``data`` if the caller already computed it (or checked
        every chunk of it against the root's chunk hashes, ``cache/chunks.py``); otherwise
        the store computes it, on the same disk thread that then writes the piece (one
        thread hop per piece: the cheapest verified path for a downloader that got the
        piece hashes from the root at ``create``). Either way it must match the piece's
        known hash, if any, or ``PieceCorruptError`` is raised and nothing is written.
        Writing a piece already present is a no-op.

        ``hashed=False`` stores a piece of no known hash without computing one: for a
        blob whose whole digest the caller checks before ``finish`` (an agent's own
        origin fetch, whose piece hashes nobody asks for), which saves a second sha256
        over every byte. After a restart such pieces count only in a complete blob, and
        are checked by re-hashing the whole blob the first time one is read.

        ``release`` hands the buffer over: the store may keep it to serve readers from
        memory (``piece_buffer``; with ``aio``, where no page-cache copy exists) and
        calls ``release()`` exactly once when it is done with it, whatever happens
        (also on failure, once no thread touches it any more). Without it the caller
        may reuse ``data`` as soon as this returns.
        """
        handed = [False]  # True once someone else (the hot set, a thread) releases it
        try:
            return await self._write_piece(
                digest, index, data, sha256, expect, release, handed, hashed
            )
        finally:
            if release is not None and not handed[0]:
                release()

    async def _write_piece(
        self,
        digest: str,
        index: int,
        data: bytes | bytearray | memoryview,
        sha256: bytes | None,
        expect: bytes | None,
        release: Callable[[], None] | None,
        handed: list[bool],
        hashed: bool,
    ) -> bytes:
        """``write_piece``; ``handed[0]`` says whether ``release`` now belongs elsewhere."""
        blob = self._get(digest)
        length = blob.piece_length(index)
        if len(data) != length:
            raise PieceCorruptError(f"{digest} piece {index}: {len(data)} bytes, want {length}")
        if blob.present[index]:
            return blob.hashes[index] or b""
        start = time.perf_counter()
        blob.pins += 1
        try:
            with self._op(FILEWRITE, digest, blob.offset(index)) as rec:
                known = blob.hashes[index]
                if expect is not None:
                    if known is not None and known != expect:
                        raise PieceCorruptError(f"{digest} piece {index}: two hashes disagree")
                    known = expect
                if sha256 is not None and known is not None and known != sha256:
                    raise PieceCorruptError(f"{digest} piece {index}: sha256 mismatch")
                self._reserve(blob, length)
                blob.writing += 1
                try:
                    sha256 = await self._put(
                        blob, index, data, sha256, known, release, handed, hashed
                    )
                    if blob.present[index]:  # a concurrent writer won
                        return sha256 or b""
                    blob.journal_append(jr.RecordKind.PIECE, index, sha256 or jr.NO_HASH)
                except OSError as exc:
                    error = write_error(f"{digest} piece {index}", exc)
                    if isinstance(error, DiskFullError):
                        # no room even after evicting what could go: whoever follows this
                        # piece (a runtime's stream, a peer) is told now, not left waiting
                        blob.fail_piece_waiters(index, error)
                    raise error from exc
                finally:
                    self._reserved -= length
                    blob.writing -= 1
                    self._note_written(blob)
                if self._blobs.get(digest) is not blob:
                    raise BlobEvictedError(f"{digest} removed while piece {index} was written")
                blob.mark_present(index, sha256, verified=True)
                self._used += length
                rec[0] = length
                self._fresh(blob, index)  # the page-cache window (``integrity.py``)
                if not self.aio and length > INLINE_PIECE:
                    self.hot.discard((digest, index))  # staged: the page cache has it now
                else:
                    self.hot.settle((digest, index))  # staged: memory is its only copy
                if release is not None and self.aio:
                    # direct writes leave no page-cache copy: serve readers from memory
                    # (buffered ones are in the page-cache window already)
                    handed[0] = True
                    self.hot.keep((digest, index), memoryview(data).cast("B"), release)
        finally:
            blob.unpin()
        self._touch(blob)
        if self._meter is not None:
            self._meter(length, time.perf_counter() - start)
        blob.wake(index)
        for listener in self._listeners:
            listener(digest, index)
        return sha256 or b""

    async def _put(
        self,
        blob: Blob,
        index: int,
        data: bytes | bytearray | memoryview,
        sha256: bytes | None,
        known: bytes | None,
        release: Callable[[], None] | None,
        handed: list[bool],
        hashed: bool,
    ) -> bytes | None:
        """Hash, check and write the piece; on a full disk evict what may go (partial
        blobs first, then least recently used) and try once more."""
        length = blob.piece_length(index)
        for attempt in range(2):
            try:
                await blob.created()
            except OSError as exc:
                # a blob whose files could not be made is no blob: it goes, all of it
                if self._blobs.get(blob.digest) is blob:
                    del self._blobs[blob.digest]
                    self._drop(blob, BlobEvictedError(f"{blob.digest}: cannot create its files"))
                raise exc
            direct = self.aio and length > INLINE_PIECE
            job = (
                direct,
                blob.fileno(),
                blob.direct_fileno() if direct else -1,
                blob.offset(index),
                data,
                sha256,
                known,
                f"{blob.digest} piece {index}",
                hashed,
            )
            try:
                if length <= INLINE_PIECE:
                    return diskio.check_and_write(*job)
                return await self.disk.write(job, release, handed)
            except OSError as exc:
                if attempt or not self._evict_for_disk(blob, exc, length):
                    raise
        raise AssertionError("unreachable")

    async def finish(self, digest: str, *, verify: bool = True) -> None:
        """Mark the blob complete; with ``verify`` hash the whole file against ``digest``.

        A mismatch removes the blob and raises ``DigestMismatchError``. ``verify=False``
        is for a writer that trusts piece hashes obtained from a verified source.
        """
        blob = self._get(digest)
        if blob.complete:
            return
        if not blob.present.all():
            raise PieceMissingError(
                f"{digest}: {blob.present.count}/{blob.present.size} pieces present"
            )
        blob.pins += 1
        try:
            try:
                await blob.created()
            except OSError as exc:
                raise write_error(f"{digest}: cannot create", exc) from exc
            await self._ensure_verified(blob, range(blob.present.size), send=False)
            if verify:
                got = await asyncio.to_thread(diskio.hash_file, blob.fileno(), blob.size)
                if "sha256:" + got.hex() != digest:
                    await self.remove(digest)
                    raise DigestMismatchError(f"{digest}: content hashes to sha256:{got.hex()}")
            try:
                blob.journal_append(jr.RecordKind.COMPLETE, 0, bytes.fromhex(digest[7:]))
            except OSError as exc:
                raise write_error(f"{digest}: cannot mark complete", exc) from exc
            blob.mark_complete()
        finally:
            blob.unpin()

    async def remove(self, digest: str) -> None:
        blob = self._blobs.pop(digest, None)
        if blob is not None:
            self._drop(blob, BlobEvictedError(f"{digest} removed"))

    # -- reading -------------------------------------------------------------------

    async def read_piece(self, digest: str, index: int) -> bytes:
        blob = self._get(digest)
        return await self.read_range(digest, blob.offset(index), blob.piece_length(index))

    async def read_range(self, digest: str, offset: int, length: int) -> bytes:
        """Bytes of a range whose pieces are all present; ``PieceMissingError`` otherwise."""
        blob = self._get(digest)
        blob.check_range(offset, length)
        start = time.perf_counter()
        blob.pins += 1
        try:
            with self._op(FILEREAD, digest, offset) as rec:
                await self._ensure_verified(blob, pieces_of_range(blob.piece_size, offset, length))
                try:
                    data = await self._disk(os.pread, blob.fileno(), length, offset)
                except OSError as exc:
                    raise PieceReadError(f"{digest} @{offset}: {exc.strerror}") from exc
                if len(data) != length:
                    raise PieceReadError(f"{digest} @{offset}: short read")
                rec[0] = length
        finally:
            blob.unpin()
        self._touch(blob)
        if self._meter is not None:
            self._meter(length, time.perf_counter() - start)
        return data

    async def file_range(self, digest: str, offset: int, length: int) -> FileRange:
        """The open data file and range to ``sendfile``; hold a ``lease`` while sending."""
        blob = self._get(digest)
        blob.check_range(offset, length)
        await self._ensure_verified(blob, pieces_of_range(blob.piece_size, offset, length))
        self._touch(blob)
        if self._audit is not None:
            self._audit.record(FILEREAD, digest, offset, length, 0.0)
        if self._meter is not None:
            self._meter(length, 0.0)
        return FileRange(blob.file(), offset, length)

    # -- internals -----------------------------------------------------------------

    @contextmanager
    def _op(self, op: str, digest: str, offset: int) -> Iterator[list[int]]:
        """Audit one operation; the body sets ``rec[0]`` to the bytes moved (-1 on failure)."""
        rec = [0]
        start = time.perf_counter()
        try:
            yield rec
        except BaseException:
            rec[0] = -1
            raise
        finally:
            if self._audit is not None:
                self._audit.record(op, digest, offset, rec[0], time.perf_counter() - start)

    def _touch(self, blob: Blob) -> None:
        self._tick += 1
        blob.last_used = self._tick

    async def _disk(self, fn: Callable[..., T], *args: Any) -> T:
        return await self.disk.run(fn, *args)

    async def sync(self) -> None:
        """fsync, in one batch on a disk thread, the journals and metas that changed."""
        dirty = [b for b in self._blobs.values() if b.dirty]
        await asyncio.gather(*(b.created() for b in dirty), return_exceptions=True)
        await self.disk.sync([b for b in dirty if b.has_files])

    async def _sync_loop(self) -> None:
        while True:
            await asyncio.sleep(SYNC_INTERVAL)
            try:
                await self.sync()
            except OSError as exc:
                log.warning("batched fsync of the piece store failed: %s", exc)

    def _reserve(self, blob: Blob, length: int) -> None:
        while self._used + self._reserved + length > self.capacity:
            victim = self._victim(keep=blob)
            if victim is None:
                raise CacheFullError(
                    f"{blob.digest}: {length} bytes do not fit in capacity {self.capacity} "
                    f"(used {self._used}, in flight {self._reserved}, nothing evictable)"
                )
            self._evict(victim, "for room")
        self._reserved += length

    def _drop(self, blob: Blob, reason: BlobEvictedError) -> None:
        self.hot.drop_blob(blob.digest)
        self._used -= blob.used
        blob.fail_waiters(reason)
        blob.close_files(later=True)  # not under a send still under way (a lease)
        if blob.creating is not None and not blob.creating.done():
            # not under the thread that is still making them
            blob.creating.add_done_callback(
                lambda _: shutil.rmtree(blob.directory, ignore_errors=True)
            )
        else:
            shutil.rmtree(blob.directory, ignore_errors=True)

    def __repr__(self) -> str:
        complete = sum(1 for b in self._blobs.values() if b.complete)
        pinned = sum(1 for b in self._blobs.values() if b.pins)
        kept = sum(1 for d in self._blobs if d in self._kept)
        kept_text = f", {kept} kept" if kept else ""
        return (
            f"<PieceStore {self.path} [blobs: {len(self._blobs)} ({complete} complete, "
            f"{len(self._blobs) - complete} partial, {pinned} pinned){kept_text} | "
            f"used {self._used} / {self.capacity} bytes, {self._reserved} in flight | "
            f"hot {len(self.hot)} pieces, {self.hot.bytes} bytes | aio={self.aio}]>"
        )


def _retrieved(fut: asyncio.Future[None]) -> None:
    """A creation that failed is reported by the first write that waits for it."""
    if not fut.cancelled():
        fut.exception()
