"""Fetch a blob from its origin registry into the piece store, piece by piece, once.

The only path by which bytes enter the peer network. Concurrent requests for the same
blob collapse into one fetch (single flight). Each piece is hashed as soon as its last
byte arrives and stored with that hash, and ``on_piece`` publishes it at once, so the
swarm can spread the head of a blob while its tail is still on the wire. The whole
digest is checked at the end: a mismatch removes the blob and fails every waiter,
loudly, because every piece hash computed along the way describes the wrong bytes.

The body arrives by ``recv_into`` straight into page-aligned piece buffers from a pool
(``BodyReader``): no joins, no copy for ``O_DIRECT``, no fresh memory. While the socket
fills the next piece, a disk thread hashes and writes the last one and the hashing
thread adds it to the whole digest: the two hashes run on both cores at once. The
store keeps each piece's buffer (``write_piece(release=)``) so the runtime's stream
is served from memory, not read back from disk.

The GET goes out with the requesting client's own credentials, so its answer is also
that client's access check (``AccessChecker.grant``): a cold blob costs the origin one
request, not a HEAD and a GET.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from shoal.cache.blob import BlobInfo
from shoal.cache.buffers import BufferPool
from shoal.cache.chunks import chunk_digests
from shoal.cache.store import PieceStore
from shoal.errors import DigestMismatchError, ShoalError, UpstreamUnavailableError
from shoal.observability import AuditLog, AuditRecord, Metrics, MetricType
from shoal.observability.audit import DOWNLOAD
from shoal.oci.digest import Digest
from shoal.registry.access import AccessChecker
from shoal.registry.bodyreader import BodyEndedError, BodyReader
from shoal.registry.hashing import run_hash
from shoal.registry.upstream import UpstreamClient

log = logging.getLogger(__name__)

#: bytes per socket read, per whole-digest update and per step a staged piece grows
CHUNK = 1 << 20
#: blobs up to this size are staged for the runtime's stream whatever ``aioEnable``
#: says: a small layer's latency (waiting for each piece to be written) costs more
#: than the copy a send from memory costs beside ``sendfile``
STAGE_SMALL = 16 << 20
#: bytes per step of a small blob
SMALL_CHUNK = 256 << 10

#: ``on_piece(digest, index, sha256, chunk_hashes)`` once a piece is stored
PieceCallback = Callable[[str, int, bytes, bytes], None]


@dataclass(frozen=True, slots=True)
class Source:
    """Where a blob comes from and with whose credentials."""

    host: str
    name: str
    authorization: str = ""


class UpstreamRefusedError(ShoalError):
    """The origin answered the fetch with a 4xx: status and challenge go back as they came."""

    def __init__(self, status: int, challenge: str | None, message: str) -> None:
        super().__init__(message)
        self.http_status = status
        self.oci_code = {401: "UNAUTHORIZED", 403: "DENIED", 404: "BLOB_UNKNOWN"}.get(
            status, "UNKNOWN"
        )
        self.challenge = challenge


class Flight:
    """One fetch in progress; everyone who asked for the blob holds the same one."""

    __slots__ = ("error", "info", "source", "task")

    def __init__(self, source: Source) -> None:
        self.info: asyncio.Future[BlobInfo] = asyncio.get_running_loop().create_future()
        self.task: asyncio.Task[None] | None = None
        self.error: Exception | None = None
        #: whose credentials the GET carries
        self.source = source

    async def wait(self) -> None:
        """Until the fetch ends; raises what it failed with."""
        if self.task is not None:
            await asyncio.shield(self.task)
        if self.error is not None:
            raise self.error


class OriginFetcher:
    def __init__(
        self,
        store: PieceStore,
        upstream: UpstreamClient,
        metrics: Metrics,
        audit: AuditLog,
        on_piece: PieceCallback | None = None,
        *,
        concurrency: int = 128,
        access: AccessChecker | None = None,
        buffers: BufferPool | None = None,
    ) -> None:
        self.store = store
        self.upstream = upstream
        self.metrics = metrics
        self.audit = audit
        self.on_piece = on_piece
        #: told of every GET the origin answered 200: that client may read the blob
        self.access = access
        self.buffers = buffers or BufferPool()
        self._flights: dict[str, Flight] = {}
        self._limit = asyncio.Semaphore(concurrency)
        self.fetches = 0

    def __repr__(self) -> str:
        return f"<OriginFetcher [{len(self._flights)} in flight | {self.fetches} fetched]>"

    def fetching(self, digest: str) -> bool:
        return digest in self._flights

    def would_fetch(self, digest: str) -> bool:
        """Whether ``start`` would send a new GET now (nothing stored, nothing in flight)."""
        return digest not in self._flights and self.store.lookup(digest) is None

    async def start(self, digest: Digest, source: Source) -> tuple[BlobInfo, Flight | None]:
        """Begin (or join) the fetch; return the geometry once the origin answers.

        The flight is ``None`` when the store already holds the whole blob.
        """
        key = str(digest)
        info = self.store.lookup(key)
        if info is not None and info.complete:
            return info, None
        flight = self._flights.get(key)
        if flight is None:
            flight = Flight(source)
            self._flights[key] = flight
            flight.task = asyncio.create_task(self._run(digest, source, flight))
        return await asyncio.shield(flight.info), flight

    async def close(self) -> None:
        tasks = [f.task for f in self._flights.values() if f.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self, digest: Digest, source: Source, flight: Flight) -> None:
        """The fetch task: never raises but on cancellation; failures land in ``flight``."""
        key = str(digest)
        try:
            async with self._limit:
                await self._fetch(digest, source, flight)
            self.fetches += 1
        except Exception as exc:
            flight.error = exc
            log.error("fetch of %s from %s failed: %s", key, source.host, exc)
        finally:
            if not flight.info.done():
                flight.info.set_exception(
                    flight.error or UpstreamUnavailableError(f"fetch of {key} cancelled")
                )
                flight.info.exception()  # marked retrieved: waiters get it through start()
            self._flights.pop(key, None)

    async def _fetch(self, digest: Digest, source: Source, flight: Flight) -> None:
        key = str(digest)
        path = f"/v2/{source.name}/blobs/{digest}"
        pathname = f"/{self.upstream.base_url(source.host)}{path}"
        headers = {"Authorization": source.authorization}
        start = time.perf_counter()
        with self.audit.timed(DOWNLOAD, pathname) as rec:
            resp = await self.upstream.request(
                "GET", source.host, path, headers, follow_redirects=True
            )
            async with resp:
                if resp.status != 200:
                    if 400 <= resp.status < 500:
                        raise UpstreamRefusedError(
                            resp.status,
                            resp.headers.get("WWW-Authenticate"),
                            f"origin {source.host} answered HTTP {resp.status} for {key}",
                        )
                    raise UpstreamUnavailableError(
                        f"origin {source.host} answered HTTP {resp.status} for {key}"
                    )
                size = resp.content_length
                if size is None:
                    raise UpstreamUnavailableError(f"origin sent {key} without a length")
                if self.access is not None:
                    self.access.grant(source.host, source.name, digest, source.authorization, size)
                info = await self.store.create(key, size)
                flight.info.set_result(info)
                reader = BodyReader(resp, read_timeout=self.upstream.config.timeout)
                try:
                    with self.store.lease(key):
                        await self._pieces(key, digest, info, reader, rec)
                finally:
                    reader.close()
        self.metrics.record(MetricType.DOWNLOAD, 0, time.perf_counter() - start)

    async def _pieces(
        self,
        key: str,
        digest: Digest,
        info: BlobInfo,
        reader: BodyReader,
        rec: AuditRecord,
    ) -> None:
        """Receive piece after piece into pooled buffers, ``CHUNK`` at a time: each chunk
        is added to the whole digest in line and made visible to the runtime's stream
        (staged) at once; each complete piece is hashed and written on a disk thread
        while the next one arrives."""
        whole = hashlib.new(digest.algorithm)
        # piece buffers this fetch holds at most: one filling, one queued for the
        # socket, one being written (and streamed): a 1 GiB blob in 16 MiB pieces keeps
        # the agent at 48 MiB above idle
        held = _Held(3)
        # without a page-cache copy (or for a small blob) the runtime's stream sends a
        # piece from here as it arrives, a chunk at a time; otherwise it sendfiles each
        # piece once written (a copy less: 2.39 against 2.70 ns/B), and a piece is one
        # socket read target and one hash step (fewer wake-ups and thread hops)
        small = info.size <= STAGE_SMALL
        stage = self.store.aio or small
        # a small blob: short steps (the stream starts sooner) hashed in line (no thread
        # hop between the last byte and the digest check); a big one: 1 MiB steps
        # hashed on the hashing thread (in line measured 0.5 ns/B worse: the origin's
        # socket stalls while the loop hashes)
        step = (SMALL_CHUNK if small else CHUNK) if stage else max(info.piece_size, 1)
        planned: deque[tuple[int, memoryview, _Lease]] = deque()
        writes: deque[asyncio.Task[None]] = deque()
        publish = _InOrder(key, self.on_piece)
        hashing: asyncio.Future[None] | None = None

        async def plan(index: int) -> None:
            """Queue piece ``index``'s buffer on the socket, chunk by chunk."""
            if index >= info.piece_count:
                return
            await held.room()
            view = self.buffers.view(info.piece_length(index))
            lease = _Lease(self.buffers, view, held)
            for off in range(0, len(view), step):
                reader.submit(view[off : off + step])
            if not info.has(index) and stage:
                lease.holders += 1  # the store's, while it serves the staged bytes
                self.store.stage_piece(key, index, view, lease.drop)
            planned.append((index, view, lease))

        try:
            await plan(0)
            await plan(1)
            for index in range(info.piece_count):
                _, view, lease = planned.popleft()
                filled = 0
                while filled < len(view):
                    try:
                        # a small blob's bytes go on as they come; a big one's by 1 MiB
                        chunk = (await reader.more())[0] if small else await reader.next()
                    except BodyEndedError as exc:
                        raise UpstreamUnavailableError(
                            f"origin body of {key}: {exc.message}"
                        ) from exc
                    if not len(chunk):
                        raise UpstreamUnavailableError(f"origin body of {key} ended early")
                    if small:
                        whole.update(chunk)
                    else:
                        if hashing is not None:
                            await hashing
                        hashing = asyncio.ensure_future(run_hash(whole.update, chunk))
                        # never back in the pool while the hashing thread reads it (the
                        # loop's order already ensures that; the hold makes it explicit)
                        lease.hold()
                        hashing.add_done_callback(lease.hashed)
                    filled += len(chunk)
                    self.metrics.add_bytes(MetricType.DOWNLOAD, len(chunk))
                    if stage:
                        self.store.grow_piece(key, index, filled, view)
                if info.has(index):
                    lease.drop_mine()
                    publish.skip(index)
                else:
                    writes.append(
                        asyncio.create_task(self._write(key, index, view, lease, rec, publish))
                    )
                while len(writes) > 1 or (writes and writes[0].done()):
                    # one write at a time: two at once dirty twice the page cache, and
                    # fresh pages are what is dear here (see ``cache/diskio.py``)
                    await writes.popleft()  # in order; a failed write fails the fetch
                await plan(index + 2)
            if hashing is not None:
                await hashing
            if whole.hexdigest() == digest.hex:
                self.store.vouch(key)  # the runtime's stream may finish; the writes land
            while writes:
                await writes.popleft()
        except BaseException:
            for task in writes:
                task.cancel()
            await asyncio.gather(*writes, return_exceptions=True)
            left = self.store.lookup(key)
            if left is not None and not left.complete:
                await self.store.remove(key)  # streams following it are cut, not hung
            raise
        if whole.hexdigest() != digest.hex:
            await self.store.remove(key)
            raise DigestMismatchError(
                f"origin content of {key} hashes to {digest.algorithm}:{whole.hexdigest()}"
            )
        await self.store.finish(key, verify=False)

    async def _write(
        self,
        key: str,
        index: int,
        view: memoryview,
        lease: _Lease,
        rec: AuditRecord,
        publish: _InOrder,
    ) -> None:
        chunks = b""
        try:
            # piece hashes only where someone publishes them (the root, for the swarm);
            # an agent's own fetch is vouched for by the whole digest alone
            if self.on_piece is None:
                sha = await self.store.write_piece(key, index, view, hashed=False)
            else:
                # and beside each piece hash its chunk hashes (``cache/chunks.py``), on a
                # second thread while the disk thread hashes and writes the piece
                sha, chunks = await asyncio.gather(
                    self.store.write_piece(key, index, view),
                    asyncio.to_thread(chunk_digests, view),
                )
        finally:
            lease.drop_mine()
        rec.size += len(view)
        publish.done(index, sha, chunks)


class _InOrder:
    """``on_piece`` in piece order, whichever write finishes first (a short last piece
    is written in line, ahead of the big one before it)."""

    __slots__ = ("done_", "key", "next", "on_piece")

    def __init__(self, key: str, on_piece: PieceCallback | None) -> None:
        self.key = key
        self.on_piece = on_piece
        self.next = 0
        self.done_: dict[int, tuple[bytes, bytes] | None] = {}

    def done(self, index: int, sha: bytes | None, chunks: bytes = b"") -> None:
        self.done_[index] = None if sha is None else (sha, chunks)
        while self.next in self.done_:
            got = self.done_.pop(self.next)
            if got is not None and self.on_piece is not None:
                self.on_piece(self.key, self.next, *got)
            self.next += 1

    def skip(self, index: int) -> None:
        self.done(index, None)


class _Held:
    """How many piece buffers a fetch holds; ``room()`` waits for one to come back."""

    __slots__ = ("changed", "count", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0
        self.changed = asyncio.Event()

    async def room(self) -> None:
        while self.count >= self.limit:
            self.changed.clear()
            await self.changed.wait()
        self.count += 1

    def freed(self) -> None:
        self.count -= 1
        self.changed.set()


class _Lease:
    """A piece buffer held by the fetch (until written) and by the store (while it serves
    the staged bytes): back to the pool when both are done with it (neither may see it
    reused under it). The fetch's own hold is what ``_Held`` counts: what the store keeps
    is bounded by the store (``HOT_BYTES``), and waiting on it here would deadlock (it
    lets a piece go only once a later one is written)."""

    __slots__ = ("held", "holders", "mine", "pool", "view")

    def __init__(self, pool: BufferPool, view: memoryview, held: _Held) -> None:
        self.pool = pool
        self.view = view
        self.held = held
        self.holders = 1  # every hold: the fetch's own and its hashes', the store's
        self.mine = 1  # the fetch's own holds (its write, its hashes): what ``_Held`` counts

    def hold(self) -> None:
        """One more of the fetch's own holds (a hash of part of it under way)."""
        self.holders += 1
        self.mine += 1

    def hashed(self, _: object) -> None:
        """A hash is done with it (a done-callback)."""
        self.drop_mine()

    def drop_mine(self) -> None:
        self.mine -= 1
        if self.mine == 0:
            self.held.freed()
        self.drop()

    def drop(self) -> None:
        self.holders -= 1
        if self.holders == 0:
            self.pool.give(self.view.obj)  # type: ignore[arg-type]
