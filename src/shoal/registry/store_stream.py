"""Serve a blob (or a range of it) from the piece store, following a download in progress.

The client gets bytes in order as pieces land: each piece is waited for (an event, not
a poll) and sent from wherever it already is: from the buffer it arrived in, if the
store still keeps it (``PieceStore.piece_buffer``: a piece an origin fetch has just
staged, or one that just landed; never read back from disk), else from the page cache
with ``sendfile``. So the runtime starts unpacking while later pieces are still
arriving.

A whole-blob answer holds its last ``HOLD`` bytes back until the whole digest was
checked: the store marks the blob complete only after that (by the origin fetch, or by
the root for a swarm download), and an origin fetch vouches for it as soon as its
digest matches, before its last pieces are written (``PieceStore.vouch``): the client
never takes a wrong blob for a whole one, and the blob is not hashed a third time on its
way out. If the download fails,
the connection is cut.
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

#: bytes of a whole-blob answer held back until the whole digest is checked (any one
#: byte would do: a client missing it cannot take the body for whole)
HOLD = 64 << 10
#: bytes per socket write from a piece buffer
SEND_CHUNK = 1 << 20


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
    # a whole answer sends everything before ``hold`` at once, the rest once verified
    hold = last + 1 - min(HOLD, info.size) if byte_range is None else last + 1

    async def send(lo: int, hi: int) -> None:
        """Bytes ``lo .. hi-1`` to the socket, piece by piece: from memory while the
        store holds a piece there (a staged one as its bytes arrive), else from the page
        cache once the piece is present."""
        for index in pieces_of_range(info.piece_size, lo, hi - lo):
            base = index * info.piece_size
            done, end = max(lo, base), min(hi, base + info.piece_length(index))
            with store.piece_buffer(key, index) as hot:
                while hot is not None and done < end:
                    if hot.filled <= done - base and not await hot.more(done - base):
                        break  # it left memory before all of it came: the rest from disk
                    upto = min(end, base + hot.filled, done + SEND_CHUNK)
                    await out.write(hot.view[done - base : upto - base])
                    sent(upto - done)
                    done = upto
            if done < end:  # from the page cache (under TLS asyncio copies it via Python)
                await store.wait_piece(key, index)
                src = await store.file_range(key, done, end - done)
                transport = request.transport
                if transport is None or transport.is_closing():
                    raise ConnectionResetError("the client went away")
                await loop.sendfile(transport, src.file, src.offset, src.length)
                sent(end - done)

    def sent(n: int) -> None:
        rec.size += n
        metrics.add_bytes(MetricType.PREAD, n)

    with audit.timed(HTTP_PREAD, pathname, first) as rec, store.lease(key):
        writer = await out.prepare(request)
        send_headers = getattr(writer, "send_headers", None)
        if callable(send_headers):
            send_headers()  # at once, and alone (not joined to the first piece: a copy)
        try:
            for index in pieces_of_range(info.piece_size, first, last - first + 1):
                await store.wait_readable(key, index)
                base = index * info.piece_size
                lo = max(first, base)
                hi = min(hold, base + info.piece_length(index))
                if hi > lo:
                    await send(lo, hi)
            if byte_range is None:
                try:
                    await store.wait_vouched(key)
                except ShoalError as exc:
                    raise DigestMismatchError(
                        f"{key}: the download failed before it was complete"
                    ) from exc
            if hold <= last:
                await send(hold, last + 1)
        except BaseException as exc:
            # the headers promised the whole body: whatever broke (a failed download, its
            # file closed under a sendfile, a cancellation), the client must see a cut
            if isinstance(exc, ShoalError):
                log.error("serving %s from the store failed: %s; cutting the response", key, exc)
            elif not isinstance(exc, asyncio.CancelledError | ConnectionError):
                log.error("serving %s from the store failed: %r; cutting the response", key, exc)
            transport = request.transport
            if transport is not None:
                transport.abort()
            raise
        await out.write_eof()
    metrics.record(MetricType.PREAD, 0, time.perf_counter() - start)
    return out
