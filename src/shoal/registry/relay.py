"""The relay: an upstream blob body to the client, hashed on the way, held back at the end.

Bytes come in by ``recv_into`` (``BodyReader``) into a few reused page-aligned 1 MiB
buffers and go out as ``memoryview`` writes: the kernel copies each byte in and out,
Python touches none. What arrived is forwarded at once (``BodyReader.more``: in big
runs when the upstream is fast, byte by byte when it trickles, so a small blob is not
held up a whole buffer at a time), hashed in line first (one core hashes while the
other runs the registry and the client; a hashing thread was measured worse on 2
cores, see ``hashing.py``), except the last bytes of a whole-blob answer: those are
held back until the digest is known to match. On a mismatch or a short
upstream body the connection is cut, so the client holds an incomplete body and never
takes a wrong blob for a whole one.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import NoReturn

import aiohttp
from aiohttp import web

from shoal.cache.buffers import BufferPool
from shoal.errors import DigestMismatchError, UpstreamUnavailableError
from shoal.observability import AuditRecord, Metrics, MetricType
from shoal.oci.digest import Digest, DigestVerifier
from shoal.oci.range import ByteRange, parse_content_range
from shoal.registry.bodyreader import BodyEndedError, BodyReader
from shoal.registry.store_stream import blob_headers

log = logging.getLogger(__name__)

#: bytes per buffer (per hash update and per socket write)
CHUNK = 1 << 20
#: buffers per relay: one being sent, one filling, one queued
DEPTH = 3
#: relay buffers are shared by all relays of the process
POOL = BufferPool(keep_bytes=16 * CHUNK)


class _Ring:
    """Buffers queued on the reader, ``CHUNK`` each, cut to the body's length."""

    def __init__(self, reader: BodyReader) -> None:
        self.reader = reader
        self.left = reader.length  # bytes not yet asked for (None: unknown)
        self.out: deque[memoryview] = deque()
        for _ in range(DEPTH):
            self._ask()

    def _ask(self) -> None:
        if self.left is not None and self.left <= 0:
            return
        size = CHUNK if self.left is None else min(CHUNK, self.left)
        view = POOL.view(size)
        self.reader.submit(view)
        self.out.append(view)
        if self.left is not None:
            self.left -= size

    def recycle(self) -> None:
        """The oldest buffer's bytes are gone to the socket: queue it again."""
        view = self.out.popleft()
        POOL.give(view.obj)  # type: ignore[arg-type]
        self._ask()

    def close(self) -> None:
        """Buffers still queued are dropped, not pooled: the socket may still fill them."""
        self.out.clear()


async def relay_body(
    request: web.Request,
    resp: aiohttp.ClientResponse,
    digest: Digest,
    byte_range: ByteRange | None,
    record: AuditRecord,
    *,
    metrics: Metrics,
    read_timeout: float,
) -> web.StreamResponse:
    """Copy the upstream body to the client; ``record`` follows offset and bytes sent."""
    out = web.StreamResponse(status=resp.status)
    out.headers.update(blob_headers(digest))
    expected = resp.content_length
    skip = 0
    limit: int | None = None
    if resp.status == 206:
        first, last, total = parse_content_range(resp.headers.get("Content-Range", ""))
        out.headers["Content-Range"] = f"bytes {first}-{last}/{'*' if total is None else total}"
        record.offset = first
    elif byte_range is not None:
        # the upstream ignored the Range: cut the requested part out of the whole body
        if expected is None:
            raise UpstreamUnavailableError("upstream ignored Range and sent no length")
        first, last = byte_range.resolve(expected)
        skip, limit = first, last - first + 1
        out.set_status(206)
        out.headers["Content-Range"] = f"bytes {first}-{last}/{expected}"
        record.offset = first
    verifier = DigestVerifier(digest) if resp.status == 200 and byte_range is None else None
    length = limit if limit is not None else expected
    if length is not None:
        out.content_length = length
    writer = await out.prepare(request)
    send_headers = getattr(writer, "send_headers", None)
    if callable(send_headers):
        send_headers()  # alone, so the first body write is not joined to them (a copy)
    reader = BodyReader(resp, read_timeout=read_timeout)
    ring = _Ring(reader)
    received = sent = 0
    held = b""  # a body without a length: the last chunk, copied, until the next comes
    try:
        while ring.out:
            try:
                part, done = await reader.more()
            except BodyEndedError as exc:
                _fail(request, digest, f"short body ({exc.message})")
            if not len(part):
                break  # a body without a length ended
            received += len(part)
            metrics.add_bytes(MetricType.DOWNLOAD, len(part))
            if verifier is not None:
                verifier.update(part)
            if skip:
                cut = min(skip, len(part))
                part, skip = part[cut:], skip - cut
            if limit is not None:
                part = part[: limit - sent]
            final = expected is not None and received >= expected
            if verifier is not None and expected is None:
                if held:
                    await out.write(held)
                    sent += len(held)
                held = bytes(part)
                part = part[:0]
            elif verifier is not None and final and not verifier.matches():
                _fail(request, digest, "digest mismatch")
            if part:
                await out.write(part)
                sent += len(part)
                metrics.add_bytes(MetricType.PREAD, len(part))
                record.size = sent
            if done:
                ring.recycle()
            if final or (limit is not None and sent >= limit):
                break
        if verifier is not None and expected is None:
            if not verifier.matches():
                _fail(request, digest, "digest mismatch")
            if held:
                await out.write(held)
                sent += len(held)
                metrics.add_bytes(MetricType.PREAD, len(held))
                record.size = sent
        if limit is not None and sent < limit:
            _fail(request, digest, f"short body ({received} bytes)")
    except BaseException:
        # the headers promised a length: whatever broke, the client must see a cut
        transport = request.transport
        if transport is not None:
            transport.abort()
        raise
    finally:
        ring.close()
        reader.close()
    await out.write_eof()
    return out


def _fail(request: web.Request, digest: Digest, what: str) -> NoReturn:
    """Cut the client's connection (its body is visibly incomplete) and raise."""
    log.error("blob %s from upstream failed: %s; cutting the response", digest, what)
    transport = request.transport
    if transport is not None:
        transport.abort()
    raise DigestMismatchError(f"blob {digest}: {what}")
