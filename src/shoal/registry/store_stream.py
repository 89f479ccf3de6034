"""Serve a blob (or a range of it) from the piece store, following a download in progress.

The client gets bytes in order as pieces land: each piece is waited for and sent
from the page cache with ``sendfile`` (no copy through Python), so the runtime starts
unpacking while later pieces are still arriving. A whole-blob answer holds its last
piece back until the store marks the blob complete,
which happens only after the whole digest was checked (by the origin fetch, or by the
root for a swarm download): the client never takes a wrong blob for a whole one, and
the blob is not hashed a third time on its way out. If the download fails, the
connection is cut.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiohttp import web

from shoal.cache.blob import BlobInfo
from shoal.cache.layout import pieces_of_range
from shoal.cache.store import PieceStore
from shoal.errors import DigestMismatchError, ShoalError
from shoal.observability import AuditLog, Metrics, MetricType
from shoal.observability.audit import HTTP_PREAD
from shoal.oci.digest import Digest
from shoal.oci.range import ByteRange
from shoal.registry.responses import API_VERSION_HEADER

log = logging.getLogger(__name__)


#: seconds between looks at a blob whose last piece is in but whose digest check is not
COMPLETE_POLL = 0.005


async def _until_complete(store: PieceStore, key: str) -> None:
    """Until the whole digest is checked; the blob vanishing means it failed."""
    while True:
        info = store.lookup(key)
        if info is None:
            raise DigestMismatchError(f"{key}: the download failed before it was complete")
        if info.complete:
            return
        await asyncio.sleep(COMPLETE_POLL)


def blob_headers(digest: Digest) -> dict[str, str]:
    headers = dict(API_VERSION_HEADER)
    headers.update(
        {
            "Content-Type": "application/octet-stream",
            "Docker-Content-Digest": str(digest),
            "Accept-Ranges": "bytes",
        }
    )
    return headers


async def stream_from_store(
    request: web.Request,
    store: PieceStore,
    digest: Digest,
    info: BlobInfo,
    byte_range: ByteRange | None,
    *,
    metrics: Metrics,
    audit: AuditLog,
    pathname: str,
) -> web.StreamResponse:
    key = str(digest)
    first, last = (0, info.size - 1) if byte_range is None else byte_range.resolve(info.size)
    out = web.StreamResponse(status=200 if byte_range is None else 206)
    out.headers.update(blob_headers(digest))
    if byte_range is not None:
        out.headers["Content-Range"] = f"bytes {first}-{last}/{info.size}"
    out.content_length = last - first + 1
    start = time.perf_counter()
    loop = asyncio.get_running_loop()

    async def send(lo: int, length: int) -> None:
        """Bytes ``lo ..`` from the page cache to the socket (``sendfile``; under TLS or
        a loop without it asyncio copies them through Python)."""
        src = await store.file_range(key, lo, length)
        transport = request.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the client went away")
        await loop.sendfile(transport, src.file, src.offset, src.length)
        rec.size += length
        metrics.add_bytes(MetricType.PREAD, length)

    with audit.timed(HTTP_PREAD, pathname, first) as rec, store.lease(key):
        await out.prepare(request)  # the headers go out now (aiohttp sends them at once)
        held: tuple[int, int] | None = None  # the last range, until the digest checks out
        try:
            for index in pieces_of_range(info.piece_size, first, last - first + 1):
                await store.wait_piece(key, index)
                piece_start = index * info.piece_size
                lo = max(first, piece_start)
                hi = min(last + 1, piece_start + info.piece_length(index))
                if held is not None:
                    await send(*held)
                held = (lo, hi - lo)
            if byte_range is None:
                await _until_complete(store, key)
        except ShoalError as exc:
            log.error("serving %s from the store failed: %s; cutting the response", key, exc)
            transport = request.transport
            if transport is not None:
                transport.abort()
            raise
        if held is not None:
            await send(*held)
        await out.write_eof()
    metrics.record(MetricType.PREAD, 0, time.perf_counter() - start)
    return out
