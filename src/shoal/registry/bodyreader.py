"""An upstream blob body received straight into the caller's buffers (``recv_into``).

aiohttp's response reader costs the relay three copies and as many allocations per
byte: the transport's ``recv`` makes a ``bytes``, the HTTP parser slices the body out of
it into another, and ``iter_chunked`` joins those. Together with the writes that was
2.05-2.31 ns of agent CPU per relayed byte (issue 13), where a raw relay needs 1.3.

So once aiohttp has parsed the answer's headers (and applied every policy of
``UpstreamClient``: redirects, TLS, timeouts), a body of known length that is worth it
(``TAKEOVER_MIN`` bytes) is taken off aiohttp: the connection's transport is switched
to an ``asyncio.BufferedProtocol`` whose ``get_buffer`` hands the event loop the unfilled
part of the caller's next buffer, so the kernel (or the TLS layer) copies each byte
once, into memory that is reused. The bytes aiohttp had already buffered are copied
first. The connection is not reused afterwards (its HTTP state is ours now); a new one
costs a handshake per large blob, which is noise beside the body.

Callers queue buffers with ``submit`` and take them back filled, in order, with
``next``: the socket fills the next buffer while the caller hashes or sends the last.
Shorter bodies, and bodies without a length, go through aiohttp's reader unchanged.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any

import aiohttp

from shoal.errors import UpstreamUnavailableError

log = logging.getLogger(__name__)

#: bodies at least this long are received in place (shorter ones keep the connection)
TAKEOVER_MIN = 256 << 10
#: bytes received while no buffer is queued (one ``recv``; reading then pauses)
_SPILL = 256 << 10


class BodyEndedError(UpstreamUnavailableError):
    """The upstream body ended before its announced length, or its connection failed."""


class _Slot:
    __slots__ = ("filled", "view")

    def __init__(self, view: memoryview) -> None:
        self.view = view
        self.filled = 0


class _Receiver(asyncio.BufferedProtocol):
    """The transport's protocol once the body is ours: fills the queued slots in order."""

    def __init__(self, transport: asyncio.Transport, remaining: int, spill: bytes) -> None:
        self.transport = transport
        self.loop = asyncio.get_running_loop()
        self.progress = self.loop.time()
        self.remaining = remaining  # body bytes the socket has still to deliver
        self.queue: deque[_Slot] = deque()
        self.spill = bytearray(spill)
        self._spill_view = memoryview(bytearray(_SPILL))
        self.error: BaseException | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.paused = False

    # -- protocol callbacks ----------------------------------------------------------

    def get_buffer(self, sizehint: int) -> memoryview:
        slot = self._open_slot()
        if slot is not None:
            return slot.view[slot.filled : slot.filled + self.remaining]
        return self._spill_view[: max(1, min(self.remaining, _SPILL))]

    def buffer_updated(self, nbytes: int) -> None:
        if nbytes > self.remaining:
            self._fail(BodyEndedError("upstream sent more than the announced length"))
            return
        self.remaining -= nbytes
        self.progress = self.loop.time()
        slot = self._open_slot()
        if slot is not None:
            slot.filled += nbytes
        else:
            self.spill += self._spill_view[:nbytes]
        if self.remaining == 0 or self._open_slot() is None:
            self._pause()  # nowhere to put more: the kernel buffers it meanwhile
        head = self.queue[0] if self.queue else None
        if self.remaining == 0 or (head is not None and head.filled == len(head.view)):
            self._wake()  # once per buffer, not once per recv

    def eof_received(self) -> bool | None:
        if self.remaining:
            self._fail(BodyEndedError(f"upstream body ended {self.remaining} bytes early"))
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.remaining:
            reason = f": {exc}" if exc else ""
            self._fail(BodyEndedError(f"upstream connection lost mid-body{reason}"))

    # -- the reader side ---------------------------------------------------------------

    def _open_slot(self) -> _Slot | None:
        for slot in self.queue:
            if slot.filled < len(slot.view):
                return slot
        return None

    def add(self, slot: _Slot) -> None:
        if self.spill:
            n = min(len(self.spill), len(slot.view))
            slot.view[:n] = self.spill[:n]
            del self.spill[:n]
            slot.filled = n
        self.queue.append(slot)
        if self.remaining and self._open_slot() is not None and self.paused:
            self.paused = False
            self.transport.resume_reading()

    def _pause(self) -> None:
        if not self.paused:
            self.paused = True
            self.transport.pause_reading()

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        self._wake()
        self.transport.abort()


class BodyReader:
    """The body of ``resp``: ``submit`` buffers, ``next`` them back filled, in order."""

    def __init__(
        self,
        resp: aiohttp.ClientResponse,
        *,
        read_timeout: float = 60.0,
        takeover_min: int = TAKEOVER_MIN,
    ) -> None:
        self.resp = resp
        #: seconds without a byte before a taken-over body counts as failed
        self.read_timeout = read_timeout
        self.length = resp.content_length
        self._slots: deque[_Slot] = deque()
        self._receiver: _Receiver | None = None
        self.received = 0
        if self.length is not None and self.length >= takeover_min:
            self._receiver = _take_over(resp, self.length)

    @property
    def in_place(self) -> bool:
        """Whether the body arrives by ``recv_into`` (else through aiohttp's reader)."""
        return self._receiver is not None

    def submit(self, view: memoryview) -> None:
        slot = _Slot(view)
        self._slots.append(slot)
        if self._receiver is not None:
            self._receiver.add(slot)

    async def next(self) -> memoryview:
        """The oldest submitted buffer, filled; shorter only where the body ended (a body
        without a length), and ``BodyEndedError`` where it ended before its length."""
        slot = self._slots[0]
        if self._receiver is not None:
            await self._fill_in_place(slot)
        else:
            await self._fill_from_stream(slot)
        self._slots.popleft()
        self.received += slot.filled
        if self.length is not None and slot.filled < len(slot.view):
            raise BodyEndedError(f"upstream body ended at {self.received} of {self.length} bytes")
        return slot.view[: slot.filled]

    async def _fill_in_place(self, slot: _Slot) -> None:
        rx = self._receiver
        assert rx is not None
        loop = asyncio.get_running_loop()
        while slot.filled < len(slot.view) and rx.remaining > 0:
            if rx.error is not None:
                raise rx.error
            rx.waiter = loop.create_future()
            try:
                async with asyncio.timeout(self.read_timeout):
                    await rx.waiter
            except TimeoutError:
                if loop.time() - rx.progress >= self.read_timeout:
                    rx.transport.abort()
                    raise BodyEndedError(
                        f"upstream sent nothing for {self.read_timeout:g} s mid-body"
                    ) from None
            finally:
                rx.waiter = None
        rx.queue.popleft()
        if rx.error is not None and slot.filled < len(slot.view):
            raise rx.error

    async def _fill_from_stream(self, slot: _Slot) -> None:
        content = self.resp.content
        try:
            while slot.filled < len(slot.view):
                chunk = await content.read(len(slot.view) - slot.filled)
                if not chunk:
                    break
                slot.view[slot.filled : slot.filled + len(chunk)] = chunk
                slot.filled += len(chunk)
        except (aiohttp.ClientError, OSError) as exc:
            raise BodyEndedError(f"upstream body failed: {exc}") from exc

    def close(self) -> None:
        """Done with the body: a taken-over connection is closed, never reused."""
        if self._receiver is not None:
            self.resp.close()

    def __repr__(self) -> str:
        how = "in place" if self._receiver is not None else "via aiohttp"
        return (
            f"<BodyReader {how} [{self.received} / {self.length} bytes | "
            f"{len(self._slots)} queued]>"
        )


def _take_over(resp: aiohttp.ClientResponse, length: int) -> _Receiver | None:
    """Switch the response's connection to a ``_Receiver``; None where that cannot be done
    (no connection object, a transport without ``set_protocol``, the body already here)."""
    conn = resp.connection
    proto: Any = getattr(conn, "protocol", None)
    transport = getattr(proto, "transport", None)
    if conn is None or transport is None or not hasattr(transport, "set_protocol"):
        return None
    content = resp.content
    if content.exception() is not None or content.is_eof():
        return None
    spill = content.read_nowait(-1)  # not at EOF, so some of the body is still to come
    remaining = length - len(spill)
    drop_timeout = getattr(proto, "_drop_timeout", None)
    if callable(drop_timeout):
        drop_timeout()  # aiohttp's read timer would fire on a socket it no longer reads
    receiver = _Receiver(transport, remaining, spill)
    transport.set_protocol(receiver)
    transport.resume_reading()
    return receiver
