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
_SPILL = 64 << 10


class BodyEndedError(UpstreamUnavailableError):
    """The upstream body ended before its announced length, or its connection failed."""


_spill: list[memoryview] = []


def _spill_view() -> memoryview:
    """One scratch buffer for every receiver of the process: it is filled and copied out
    within one event-loop callback, so they never share it at once (and no receiver
    pays for a fresh one)."""
    if not _spill:
        _spill.append(memoryview(bytearray(_SPILL)))
    return _spill[0]


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
        self.error: BaseException | None = None
        self.waiter: asyncio.Future[None] | None = None
        #: the waiter wants the oldest slot filled to at least this many bytes
        self.wake_at = 0
        self.limit = 60.0
        self._timer: asyncio.TimerHandle | None = None
        self.paused = False

    # -- protocol callbacks ----------------------------------------------------------

    def get_buffer(self, sizehint: int) -> memoryview:
        slot = self._open_slot()
        if slot is not None:
            return slot.view[slot.filled : slot.filled + self.remaining]
        return _spill_view()[: max(1, min(self.remaining, _SPILL))]

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
            self.spill += _spill_view()[:nbytes]
        if self.remaining == 0 or self._open_slot() is None:
            self._pause()  # nowhere to put more: the kernel buffers it meanwhile
        head = self.queue[0] if self.queue else None
        if self.remaining == 0 or (head is not None and head.filled >= self.wake_at):
            self._wake()  # once the reader has what it waits for, not once per recv

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

    def watch(self, limit: float) -> None:
        """One timer per body, not one per wait: fails it after ``limit`` s without a
        byte (``progress`` moves on every ``recv``; the timer looks again when due)."""
        self.limit = limit
        if self._timer is None and self.remaining:
            self._timer = self.loop.call_at(self.progress + limit, self._check)

    def _check(self) -> None:
        self._timer = None
        if not self.remaining or self.error is not None:
            return
        due = self.progress + self.limit
        if self.loop.time() >= due:
            self._fail(BodyEndedError(f"upstream sent nothing for {self.limit:g} s mid-body"))
        else:
            self._timer = self.loop.call_at(due, self._check)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

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
        self._taken = 0  # bytes of the oldest slot ``more`` has handed out
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
        if self._taken:
            raise RuntimeError("next() on a buffer more() has begun")
        if self._receiver is not None:
            await self._fill_in_place(slot, len(slot.view))
        else:
            await self._fill_from_stream(slot, len(slot.view))
        self._done(slot)
        return slot.view[: slot.filled]

    async def more(self) -> tuple[memoryview, bool]:
        """What arrived in the oldest submitted buffer since the last call (at least a
        byte, unless the body ended), and whether that buffer is now done (full, or the
        body ended: it is then off the queue, as after ``next``). A relay forwards bytes
        as they come: in big runs when they come fast, at once when they trickle."""
        slot = self._slots[0]
        start = self._taken
        if self._receiver is not None:
            await self._fill_in_place(slot, start + 1)
        else:
            await self._fill_from_stream(slot, start + 1)
        part = slot.view[start : slot.filled]
        ended = self._receiver is not None and self._receiver.remaining == 0
        if slot.filled == len(slot.view) or ended or not len(part):
            self._done(slot)
            return part, True
        self._taken = slot.filled
        return part, False

    def _done(self, slot: _Slot) -> None:
        self._slots.popleft()
        self._taken = 0
        if self._receiver is not None:
            self._receiver.queue.popleft()
        self.received += slot.filled
        if self.length is not None and slot.filled < len(slot.view):
            raise BodyEndedError(f"upstream body ended at {self.received} of {self.length} bytes")

    async def _fill_in_place(self, slot: _Slot, want: int) -> None:
        """Until ``slot`` holds ``want`` bytes (or all it can: the body ended)."""
        rx = self._receiver
        assert rx is not None
        loop = asyncio.get_running_loop()
        want = min(want, len(slot.view))
        while slot.filled < want and rx.remaining > 0:
            if rx.error is not None:
                raise rx.error
            rx.wake_at = want
            rx.waiter = loop.create_future()
            rx.watch(self.read_timeout)
            try:
                await rx.waiter
            finally:
                rx.waiter = None
        if rx.error is not None and slot.filled < want:
            raise rx.error

    async def _fill_from_stream(self, slot: _Slot, want: int) -> None:
        content = self.resp.content
        want = min(want, len(slot.view))
        try:
            while slot.filled < want:
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
            self._receiver.stop()
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
