"""The peer client: kept-alive connections, many requests in flight, bytes received in place.

Design decisions:

- **One authenticated connection per peer, reused**, with up to ``max_in_flight``
  requests outstanding on it (answers are matched by request id). Opening a connection
  costs a handshake round trip; a swarm asks the same parents for piece after piece.
- **Piece bytes are received straight into the caller's buffer.** The connection is an
  ``asyncio.BufferedProtocol``: while a ``Data`` body is arriving, ``get_buffer``
  hands the event loop the unfilled tail of that read's buffer, so the kernel copies
  socket bytes directly into it (one copy, no intermediate ``bytes``). Only frame
  headers and small answers go through the codec's buffer.
- **Woken once per batch of body bytes, not per packet.** While a body is arriving the
  socket's ``SO_RCVLOWAT`` is ``min(64 KiB, bytes left)``, so the kernel wakes the event
  loop when that much is queued instead of for every segment: at 25 Mbit/s a flow
  trickles in a few KiB per wake-up, and each costs the loop far more than the copy
  (``bench/cpu_cost.py --rate-mbit 25``: 19.8 ns/B to receive before, at 100 Mbit/s
  7.5). Frame headers are read with the mark at 1, and so is everything while a
  liveness ping waits (any byte answers it); a TLS connection keeps it at 1 (its
  records do not map socket bytes to body bytes).
- **Verified before handed on**: with ``sha256=`` the piece is hashed in a worker thread
  (hashlib releases the GIL, so hashing one piece overlaps receiving the next on the
  other core) and a mismatch raises ``PieceCorruptError`` — the caller bans the peer.
  With ``check=`` (a ``ChunkCheck``) each 64 KiB chunk is checked in line the moment it
  is in, against the root's chunk hashes, so the caller may pass on what matched while
  the rest arrives (``agent/passon.py``).
- **A read given up before its answer started is cancelled on the wire** (``CancelRead``),
  so the parent does not spend its uplink on it; one whose body is arriving is received
  to the end into a scratch buffer (the stream cannot skip it).
- **Every task has an owner**: the client owns its connections and closes them all in
  ``close()`` (``async with``); a connection owns no tasks at all, only futures of the
  requests waiting on it, which fail with ``PeerUnavailableError`` when it goes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import itertools
import logging
import socket
import time
from collections.abc import Callable
from ssl import SSLContext

from shoal.cache import PieceCorruptError
from shoal.cache.chunks import ChunkCheck
from shoal.observability import Metrics, MetricType
from shoal.peer.buffers import BufferPool
from shoal.peer.errors import PeerRequestError, PeerUnavailableError
from shoal.wire import (
    HEADER_SIZE,
    Authenticated,
    AuthFailedError,
    CancelRead,
    Connection,
    Data,
    ErrorResponse,
    NeedData,
    Ping,
    Pong,
    ProtocolError,
    ReadRequest,
    Role,
    StatRequest,
    StatResponse,
    WireEvent,
    is_response,
)

log = logging.getLogger(__name__)

Address = tuple[str, int]
_RECV_BUFFER = 256 * 1024
#: a byte from the peer this recent answers a ping without one (seconds): well below the
#: picker's silence floor, so a process stopped longer than that is still found
FRESH_S = 0.1
#: ``SO_RCVLOWAT`` while a body arrives: wake-ups per MiB drop from hundreds to 16
_BODY_LOWAT = 64 * 1024


def parse_address(peer: str | Address) -> Address:
    """``host:port``, ``[v6]:port`` or a ``(host, port)`` tuple."""
    if isinstance(peer, tuple):
        return peer
    host, sep, port = peer.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"peer address needs a port: {peer!r}")
    return host.removeprefix("[").removesuffix("]"), int(port)


class _Pending:
    __slots__ = ("buffer", "check", "filled", "future", "length", "on_start", "pool")

    def __init__(
        self,
        future: asyncio.Future[object],
        buffer: memoryview | None,
        length: int,
        on_start: Callable[[], None] | None = None,
        pool: BufferPool | None = None,
        check: ChunkCheck | None = None,
    ) -> None:
        self.future = future
        self.buffer = buffer
        self.length = length
        self.on_start = on_start
        #: a read without a buffer yet takes one from here when its answer starts
        self.pool = pool
        self.filled = 0
        #: checks the body chunk by chunk as it lands (``cache/chunks.py``)
        self.check = check


MessageCallback = Callable[[Address, WireEvent], None]


class PeerConnection(asyncio.BufferedProtocol):
    def __init__(
        self,
        secret: bytes,
        node: str,
        address: Address,
        max_in_flight: int,
        on_message: MessageCallback | None = None,
    ) -> None:
        self.address = address
        self.on_message = on_message
        self.conn = Connection(Role.CLIENT, secret, node=node)
        self.transport: asyncio.Transport | None = None
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.slots = asyncio.Semaphore(max_in_flight)
        self._pending: dict[int, _Pending] = {}
        self._ids = itertools.count(1)
        self._rbuf = memoryview(bytearray(_RECV_BUFFER))
        self._body: _Pending | None = None  # the read whose body is arriving; None: discard
        self._closed_exc: BaseException | None = None
        self._pings: dict[bytes, asyncio.Future[bool]] = {}
        self._ping: asyncio.Task[bool] | None = None  # the ping out now, shared
        self._loop = asyncio.get_running_loop()
        self.heard = float("-inf")  # loop time of the last byte from the peer
        self.pings_sent = 0
        self.requests = 0
        self.cancelled = 0
        self._sock: socket.socket | None = None  # plain TCP: its receive low-water mark
        self._lowat = 1

    @property
    def alive(self) -> bool:
        return self._closed_exc is None and self.transport is not None

    # -- protocol callbacks ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if transport.get_extra_info("sslcontext") is None and sock is not None:
            self._sock = sock
        transport.write(self.conn.data_to_send())

    def get_buffer(self, sizehint: int) -> memoryview:
        if self.conn.body_remaining:
            body = self._body
            if body is not None and body.buffer is not None:
                return body.buffer[body.filled : body.filled + self.conn.body_remaining]
            return self._rbuf[: self.conn.body_remaining]
        # read a frame header alone, so that a Data body that follows goes straight into
        # its piece buffer instead of through the codec's buffer (one more recv per frame)
        have = self.conn.buffered
        if have < HEADER_SIZE:
            return self._rbuf[: HEADER_SIZE - have]
        return self._rbuf

    def buffer_updated(self, nbytes: int) -> None:
        self.heard = self._loop.time()
        if self._pings:  # any byte from the peer proves its process runs (``ping``)
            for waiter in self._pings.values():
                if not waiter.done():
                    waiter.set_result(True)
        if self.conn.body_remaining:
            self.conn.body_received(nbytes)
            body = self._body
            if body is not None:
                body.filled += nbytes
                if body.check is not None:
                    body.check.arrived(body.filled)
            if self.conn.body_remaining < self._lowat:
                self._set_lowat(self.conn.body_remaining)
            elif self._lowat == 1 and not self._pings:  # a ping ended while bytes came
                self._set_lowat(min(_BODY_LOWAT, self.conn.body_remaining))
            if self.conn.body_remaining == 0:
                self._body_done()
            return
        self.conn.receive_data(self._rbuf[:nbytes])
        self._process()

    def eof_received(self) -> bool | None:
        self.conn.receive_data(b"")
        self._process()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        reason = self._closed_exc or PeerUnavailableError(
            f"peer {self.address[0]}:{self.address[1]} closed the connection"
            + (f": {exc}" if exc else "")
        )
        self._fail_all(reason)

    # -- event handling --------------------------------------------------------------

    def _process(self) -> None:
        try:
            while not self.conn.body_remaining:
                event = self.conn.next_event()
                if isinstance(event, NeedData):
                    break
                self._on_event(event)
        except ProtocolError as exc:
            log.warning("closing peer connection to %s: %s", self.address, exc.message)
            self._fail_all(exc)
            return
        if out := self.conn.data_to_send():
            assert self.transport is not None
            self.transport.write(out)

    def _on_event(self, event: WireEvent) -> None:
        if isinstance(event, Authenticated):
            if not self.ready.done():
                self.ready.set_result(None)
            return
        if isinstance(event, Ping):
            assert self.transport is not None
            self.transport.write(self.conn.send(Pong(event.opaque)))
            return
        if isinstance(event, Pong):
            waiter = self._pings.pop(event.opaque, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(True)
            return
        if not is_response(event):  # a request or one-way message from the peer
            if self.on_message is not None:
                self.on_message(self.address, event)
            return
        request_id = getattr(event, "request_id", None)
        pending = self._pending.get(request_id) if isinstance(request_id, int) else None
        if isinstance(event, Data):
            if pending is not None and pending.length != event.length:
                raise ProtocolError(f"asked for {pending.length} bytes, peer sends {event.length}")
            self._body = pending
            if pending is not None and pending.buffer is None and pending.pool is not None:
                # page-aligned: the store writes it with O_DIRECT as it is, no copy
                pending.buffer = pending.pool.view(event.length)
            if pending is not None and pending.check is not None and pending.buffer is not None:
                pending.check.attach(pending.buffer)
            if pending is not None and pending.on_start is not None:
                pending.on_start()
            if pending is not None and pending.buffer is not None:
                pending.filled = self.conn.read_body_into(pending.buffer)
                if pending.check is not None:
                    pending.check.arrived(pending.filled)
            else:
                while self.conn.body_remaining and self.conn.read_body_into(self._rbuf):
                    pass
            if not self.conn.body_remaining:
                self._body_done()
            elif not self._pings:
                self._set_lowat(min(_BODY_LOWAT, self.conn.body_remaining))
            return
        if pending is None:
            return  # answer to a request that gave up waiting
        del self._pending[event.request_id]  # type: ignore[attr-defined]
        if isinstance(event, ErrorResponse):
            _settle(pending.future, exc=PeerRequestError(event.message, code=event.code))
        elif pending.buffer is None and pending.length < 0:
            _settle(pending.future, result=event)
        else:
            raise ProtocolError(f"unexpected {type(event).__name__} for request {request_id}")

    def _set_lowat(self, n: int) -> None:
        """Wake the loop when ``n`` bytes (at least 1) are queued on a plain socket."""
        n = max(n, 1)
        if self._sock is None or n == self._lowat:
            return
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, n)
        except OSError:  # not a TCP socket after all: wake per segment, as before
            self._sock = None
            return
        self._lowat = n

    def _body_done(self) -> None:
        body, self._body = self._body, None
        if body is not None:
            for request_id, p in list(self._pending.items()):
                if p is body:
                    del self._pending[request_id]
            _settle(body.future, result=body.buffer)

    def _fail_all(self, exc: BaseException) -> None:
        if self._closed_exc is None:
            self._closed_exc = exc
        if not self.ready.done():
            self.ready.set_exception(exc)
            self.ready.exception()  # retrieved here; ``open`` re-raises it from the future
        pending, self._pending = self._pending, {}
        self._body = None
        for p in pending.values():
            _settle(p.future, exc=exc)
        for waiter in self._pings.values():  # a closed connection answers no ping
            if not waiter.done():
                waiter.set_result(False)
        if self.transport is not None:
            self.transport.close()

    # -- requests --------------------------------------------------------------------

    async def request(self, event: WireEvent, pending: _Pending, limit_s: float) -> object:
        if self._closed_exc is not None:
            raise PeerUnavailableError(f"connection to {self.address} is closed")
        request_id = event.request_id  # type: ignore[attr-defined]
        self._pending[request_id] = pending
        assert self.transport is not None
        self.transport.write(self.conn.send(event))
        self.requests += 1
        try:
            async with asyncio.timeout(limit_s):
                return await pending.future
        except TimeoutError as exc:
            raise PeerUnavailableError(f"{self.address}: no answer in {limit_s}s") from exc
        finally:
            if self._pending.get(request_id) is pending:
                del self._pending[request_id]
                if isinstance(event, ReadRequest) and self._body is not pending:
                    self._cancel_on_wire(request_id)
            if self._body is pending:
                self._body = None  # keep receiving the body, into the scratch buffer

    def _cancel_on_wire(self, request_id: int) -> None:
        """Tell the peer not to start the answer to a read nobody waits for any more."""
        if self._closed_exc is None and self.transport is not None:
            self.transport.write(self.conn.send(CancelRead(request_id)))
            self.cancelled += 1

    def send(self, event: WireEvent) -> None:
        if self._closed_exc is not None or self.transport is None:
            raise PeerUnavailableError(f"connection to {self.address} is closed")
        self.transport.write(self.conn.send(event))

    async def ping(self, limit_s: float) -> bool:
        """Does the peer's process run? (A stopped or wedged one keeps its connections
        open; only signs of life tell it from one waiting for a piece.) True at the
        ``Pong``, or at any byte that arrives first: a pong queues behind the piece
        bodies the peer is sending on this connection, seconds on a busy link.

        A byte within the last ``FRESH_S`` answers at once, without a ping; callers that
        ask while a ping is out (every download that has the peer as a parent, all with
        the same ``limit_s``) share it and its answer.
        """
        if self._closed_exc is not None or self.transport is None:
            return False
        if self._loop.time() - self.heard < FRESH_S:
            return True
        if self._ping is None or self._ping.done():
            self._ping = asyncio.ensure_future(self._send_ping(limit_s))
        return await asyncio.shield(self._ping)  # one caller cancelled ends no other's

    async def _send_ping(self, limit_s: float) -> bool:
        assert self.transport is not None
        opaque = next(self._ids).to_bytes(8, "big")
        waiter: asyncio.Future[bool] = self._loop.create_future()
        self._pings[opaque] = waiter
        self._set_lowat(1)  # a byte held below the body's low-water mark is a sign of life
        self.transport.write(self.conn.send(Ping(opaque)))
        self.pings_sent += 1
        try:
            async with asyncio.timeout(limit_s):
                return await waiter
        except TimeoutError:
            return False
        finally:
            self._pings.pop(opaque, None)
            if not self._pings and self.conn.body_remaining:
                self._set_lowat(min(_BODY_LOWAT, self.conn.body_remaining))

    def next_id(self) -> int:
        return next(self._ids) & 0xFFFFFFFF

    def close(self) -> None:
        self._fail_all(PeerUnavailableError("connection closed by us"))

    def __repr__(self) -> str:
        host, port = self.address
        state = "closed" if self._closed_exc is not None else self.conn.state.value
        return (
            f"<PeerConnection {host}:{port} {state} [in flight: {len(self._pending)} | "
            f"requests: {self.requests}]>"
        )


def _settle(
    fut: asyncio.Future[object], *, result: object = None, exc: BaseException | None = None
) -> None:
    if fut.done():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(result)


class PeerClient:
    def __init__(
        self,
        secret: bytes,
        *,
        node: str = "",
        max_in_flight: int = 8,
        connect_timeout: float = 5.0,
        request_timeout: float = 30.0,
        metrics: Metrics | None = None,
        on_message: MessageCallback | None = None,
        ssl: SSLContext | None = None,
    ) -> None:
        self.node = node
        #: TLS to every peer (``P2PConfig.tls``, ``shoal.peer.tls``); None: clear
        self.ssl = ssl
        #: ``on_message(address, event)`` for requests/one-way messages a peer sends us
        self.on_message = on_message
        self.max_in_flight = max_in_flight
        self.connect_timeout = connect_timeout
        self.request_timeout = request_timeout
        self.metrics = metrics
        self._secret = secret
        self._conns: dict[Address, PeerConnection] = {}
        self._connecting: dict[Address, asyncio.Task[PeerConnection]] = {}
        self.bytes_received = 0

    async def __aenter__(self) -> PeerClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connection(self, peer: str | Address) -> PeerConnection:
        """The live connection to ``peer``, opened (and authenticated) if need be."""
        address = parse_address(peer)
        conn = self._conns.get(address)
        if conn is not None and conn.alive:
            return conn
        # the connect runs as its own task: a requester that is cancelled while it
        # connects (a picker withdrawing a request) must not cancel everyone else's
        # requests to the same peer; they would then never hear back
        opening = self._connecting.get(address)
        if opening is None:
            opening = asyncio.get_running_loop().create_task(self._open(address))
            self._connecting[address] = opening
            opening.add_done_callback(lambda task: self._opened(address, task))
        return await asyncio.shield(opening)

    def _opened(self, address: Address, task: asyncio.Task[PeerConnection]) -> None:
        if self._connecting.get(address) is task:
            del self._connecting[address]
        if not task.cancelled() and task.exception() is None:
            self._conns[address] = task.result()

    async def _open(self, address: Address) -> PeerConnection:
        loop = asyncio.get_running_loop()
        conn = PeerConnection(self._secret, self.node, address, self.max_in_flight, self.on_message)
        try:
            async with asyncio.timeout(self.connect_timeout):
                await loop.create_connection(
                    lambda: conn,
                    address[0],
                    address[1],
                    ssl=self.ssl,
                    server_hostname=None if self.ssl is None else address[0],
                )
                await conn.ready
        except AuthFailedError:
            conn.close()
            raise
        except (OSError, TimeoutError, PeerUnavailableError, ProtocolError) as exc:
            conn.close()
            raise PeerUnavailableError(f"cannot reach peer {address}: {exc}") from exc
        return conn

    async def stat(self, peer: str | Address, digest: str) -> StatResponse:
        conn = await self.connection(peer)
        start = time.perf_counter()
        async with conn.slots:
            fut: asyncio.Future[object] = asyncio.get_running_loop().create_future()
            req = StatRequest(conn.next_id(), digest)
            result = await conn.request(req, _Pending(fut, None, -1), self.request_timeout)
        assert isinstance(result, StatResponse)
        if self.metrics is not None:
            self.metrics.record(MetricType.PEER, 0, time.perf_counter() - start)
        return result

    async def call(self, peer: str | Address, event: WireEvent) -> WireEvent:
        """Send a request (a registered type with a ``request_id`` field; its value is
        replaced) and return the peer's answer; an error frame raises ``PeerRequestError``."""
        conn = await self.connection(peer)
        async with conn.slots:
            fut: asyncio.Future[object] = asyncio.get_running_loop().create_future()
            req = dataclasses.replace(event, request_id=conn.next_id())  # type: ignore[type-var]
            answer = await conn.request(req, _Pending(fut, None, -1), self.request_timeout)
        assert isinstance(answer, WireEvent)
        return answer

    async def notify(self, peer: str | Address, event: WireEvent) -> None:
        """Send a one-way message (no answer expected)."""
        conn = await self.connection(peer)
        conn.send(event)

    async def read(
        self,
        peer: str | Address,
        digest: str,
        offset: int,
        length: int,
        *,
        into: memoryview | bytearray | None = None,
        pool: BufferPool | None = None,
        sha256: bytes | None = None,
        on_start: Callable[[], None] | None = None,
        check: ChunkCheck | None = None,
    ) -> memoryview:
        """Bytes ``offset .. offset+length-1`` of ``digest`` from ``peer``.

        They land in ``into`` (which must hold ``length`` bytes), or in a buffer taken
        from ``pool`` when the answer starts (a read queued at a parent for seconds
        holds no memory; give it back with ``pool.give(result.obj)``), or in a new one.
        With ``sha256`` they are verified before this returns (``PieceCorruptError``).
        ``on_start()`` is called when the answer's first bytes arrive (the swarm's
        ``on_started``: a cut-through parent may hold the request until the piece lands).
        ``check`` is told of the bytes as they land (it checks them chunk by chunk, the
        caller passes on what it verified; ``cache/chunks.py``).
        """
        buffer: memoryview | None = None
        if into is not None or pool is None:
            buffer = memoryview(into if into is not None else bytearray(length)).cast("B")
            if len(buffer) < length:
                raise ValueError(f"buffer of {len(buffer)} bytes for a read of {length}")
            buffer = buffer[:length]
        conn = await self.connection(peer)
        start = time.perf_counter()
        async with conn.slots:
            fut: asyncio.Future[object] = asyncio.get_running_loop().create_future()
            req = ReadRequest(conn.next_id(), digest, offset, length)
            pending = _Pending(fut, buffer, length, on_start, pool, check)
            result = await conn.request(req, pending, self.request_timeout)
        assert isinstance(result, memoryview)
        buffer = result
        if sha256 is not None:
            got = await asyncio.to_thread(_sha256, buffer)
            if got != sha256:
                raise PieceCorruptError(
                    f"{digest} @{offset}+{length} from {conn.address}: sha256 mismatch"
                )
        self.bytes_received += length
        if self.metrics is not None:
            self.metrics.record(MetricType.PEER, length, time.perf_counter() - start)
        return buffer

    async def ping(self, peer: str | Address, limit_s: float) -> bool:
        """True if ``peer`` answers a ping within ``limit_s`` seconds (connecting first if
        need be, within the same limit)."""
        try:
            async with asyncio.timeout(limit_s):
                conn = await self.connection(peer)
        except (TimeoutError, PeerUnavailableError, AuthFailedError):
            return False
        return await conn.ping(limit_s)

    async def close(self) -> None:
        opening, self._connecting = list(self._connecting.values()), {}
        for task in opening:
            task.cancel()
        await asyncio.gather(*opening, return_exceptions=True)
        conns, self._conns = list(self._conns.values()), {}
        for conn in conns:
            conn.close()
        await asyncio.sleep(0)  # let the transports run their close callbacks

    def __repr__(self) -> str:
        alive = sum(1 for c in self._conns.values() if c.alive)
        return f"<PeerClient [connections: {alive} alive | received {self.bytes_received} bytes]>"


def _sha256(data: memoryview) -> bytes:
    return hashlib.sha256(data).digest()
