"""The peer server: answers stat and read requests from the piece store.

Design decisions:

- **Piece bytes go from the page cache to the socket with ``loop.sendfile``**
  (``os.sendfile`` under the stock asyncio loop), never through Python. uvloop has no
  sendfile (``NotImplementedError``), so the agent runs the stock loop; under a loop
  without it the server falls back to ``pread`` + ``write`` and logs that once.
- **Requests run concurrently, writes one at a time.** Each request is a task owned
  by its connection, so a read waiting for a piece still in flight does not hold up a
  stat or another read. ``loop.sendfile`` writes to the socket behind the transport's
  back, so every answer is written under the connection's write lock: a frame is never
  spliced into the middle of a body. Beyond ``max_in_flight`` requests per connection
  the server stops reading from it (back-pressure instead of memory).
- **Cut-through:** a read of a piece the store does not have yet, for a blob it does
  have, waits up to ``piece_wait`` seconds for the piece to land (the swarm hands out
  parents that are still receiving a piece). The downloader calls
  ``PieceStore.abandon_piece`` when it gives a piece up; waiting readers are then
  answered ``PIECE_MISSING`` at once.
- **Passed on while it arrives:** a read of one whole piece that this peer is fetching
  and checking chunk by chunk (``PieceStore.stage_piece(verified=True)``) starts as soon
  as the first chunk matched the root's chunk hash, and goes on as more match: a hop
  then holds a piece for a chunk's time, not the piece's (``cache/chunks.py``). Only
  verified bytes go out; a piece that stops arriving after its ``Data`` header went out
  (``piece_wait`` s without a byte, or abandoned with no other fetch of it) can only
  close the connection, since a body cannot be cut short.
- **A read the asker cancels (``CancelRead``) is dropped** if its answer has not
  started; one whose ``Data`` header is out is finished (a body cannot be cut short).
  A queued cut-through read would otherwise be served whenever its piece lands, to a
  child that has moved to another parent, at the cost of this peer's uplink.
- **A read may arrive before the blob does**: children and parent join a swarm at the
  same moment, so a read of a blob not in the store waits up to ``blob_wait`` seconds
  for it before the answer is ``NOT_FOUND``.
- **Nothing before authentication:** the wire handshake (HMAC over both nonces) must
  finish within ``handshake_timeout`` or the connection is closed; a malformed frame
  closes it with the reason logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from ssl import SSLContext
from typing import Any

from shoal.cache import BlobInfo, PieceMissingError, PieceStore
from shoal.cache.following import streamable
from shoal.cache.hot import HotPiece
from shoal.errors import BlobUnknownError, ShoalError
from shoal.observability import AuditLog, Metrics, MetricType
from shoal.observability.audit import RPC_PREAD, RPC_STAT
from shoal.peer.throttle import Throttle
from shoal.wire import (
    Authenticated,
    CancelRead,
    Connection,
    Data,
    ErrorCode,
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
)

log = logging.getLogger(__name__)

Handler = Callable[[WireEvent, str], Awaitable[WireEvent | None]]

PASSED_ON = "shoal_peer_pieces_passed_on_total"
PASSED_ON_HELP = "Pieces sent to a peer while they were still arriving here (chunk by chunk)"

#: bytes per write of a piece from memory or through TLS (``_send_view``, ``_send_body``)
TLS_STEP = 256 << 10
#: bytes asked for each connection's socket send buffer (the kernel caps it at
#: ``net.core.wmem_max``, 4 MiB here, and doubles it for its own bookkeeping)
SEND_BUFFER = 4 << 20


class PeerServer:
    def __init__(
        self,
        store: PieceStore,
        secret: bytes,
        *,
        host: str = "",
        port: int = 0,
        node: str = "",
        throttle_mb: float = 0,
        metrics: Metrics | None = None,
        audit: AuditLog | None = None,
        max_in_flight: int = 16,
        piece_wait: float = 30.0,
        blob_wait: float = 5.0,
        handshake_timeout: float = 10.0,
        handlers: Mapping[type[WireEvent], Handler] | None = None,
        ssl: SSLContext | None = None,
        congestion: str = "",
    ) -> None:
        self.store = store
        #: TCP congestion control for every connection (``P2PConfig.congestion``)
        self.congestion = congestion
        #: TLS for every connection (``P2PConfig.tls``, ``shoal.peer.tls``); None: clear
        self.ssl = ssl
        #: message types beyond stat/read (the swarm's): ``await handler(event, peer_node)``
        #: returns the answer to send, or None for a one-way message
        self.handlers = dict(handlers or {})
        self.node = node
        self.throttle = Throttle(throttle_mb)
        self.metrics = metrics
        self.audit = audit or AuditLog(None)
        self.max_in_flight = max_in_flight
        self.piece_wait = piece_wait
        self.blob_wait = blob_wait
        self.handshake_timeout = handshake_timeout
        self._secret = secret
        self._host = host
        self._port = port
        self._server: asyncio.Server | None = None
        self._connections: set[_ServerConnection] = set()
        self.reads = 0
        self.reads_cancelled = 0
        self.passed_on = 0  # reads answered while their piece was still arriving here
        self.bytes_sent = 0
        self.sending = 0  # answers whose body is being sent now
        self.sendfile_native = True

    async def __aenter__(self) -> PeerServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _ServerConnection(self),
            self._host or None,
            self._port,
            reuse_address=True,
            ssl=self.ssl,
            ssl_handshake_timeout=self.handshake_timeout if self.ssl is not None else None,
        )
        log.info("peer server listening on %s", self.addresses)

    @property
    def addresses(self) -> list[tuple[str, int]]:
        if self._server is None:
            return []
        return [sock.getsockname()[:2] for sock in self._server.sockets]

    @property
    def port(self) -> int:
        return self.addresses[0][1]

    async def push(self, peer_node: str, event: WireEvent) -> bool:
        """Send a message to every connection of the authenticated peer ``peer_node``
        (a root telling an agent something); False if it is not connected."""
        conns = [c for c in self._connections if c.peer_node == peer_node]
        for conn in conns:
            await conn._send(event)
        return bool(conns)

    async def close(self) -> None:
        if self.reads:
            log.info(
                "peer server served %d reads (%d passed on while arriving), %d bytes",
                self.reads, self.passed_on, self.bytes_sent,
            )  # fmt: skip
        if self._server is not None:
            self._server.close()
        conns = list(self._connections)
        for conn in conns:
            conn.abort("server closing", level=logging.DEBUG)
        await asyncio.gather(*(c.closed() for c in conns))
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    def load(self) -> tuple[int, int]:
        """(uploads under way now, bytes sent so far): the agent's ``Load`` report."""
        return self.sending, self.bytes_sent

    def __repr__(self) -> str:
        where = ",".join(f"{h}:{p}" for h, p in self.addresses) or "closed"
        return (
            f"<PeerServer {where} [connections: {len(self._connections)} | "
            f"served {self.reads} reads ({self.passed_on} passed on), {self.bytes_sent} bytes, "
            f"{self.reads_cancelled} cancelled | {self.throttle!r}]>"
        )


class _ServerConnection(asyncio.Protocol):
    def __init__(self, server: PeerServer) -> None:
        self.server = server
        self.tls = server.ssl is not None
        self.conn = Connection(Role.SERVER, server._secret, node=server.node)
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.peer_node = ""
        self.tasks: set[asyncio.Task[None]] = set()
        #: reads whose answer has not started, by request id (``CancelRead`` drops them)
        self._unanswered: dict[int, asyncio.Task[None]] = {}
        self._write_lock = asyncio.Lock()
        self._writable = asyncio.Event()
        self._writable.set()
        self._paused_reading = False
        self._timer: asyncio.TimerHandle | None = None

    # -- protocol callbacks ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        _large_send_buffer(transport)
        if self.server.congestion and not _congestion(transport, self.server.congestion):
            self.server.congestion = ""  # not allowed here: said once, the system's stays
        peername = transport.get_extra_info("peername")
        self.peer = f"{peername[0]}:{peername[1]}" if peername else "?"
        self.server._connections.add(self)
        transport.write(self.conn.data_to_send())
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self.server.handshake_timeout, self._handshake_expired)

    def data_received(self, data: bytes) -> None:
        self.conn.receive_data(data)
        try:
            while True:
                event = self.conn.next_event()
                if isinstance(event, NeedData):
                    break
                self._on_event(event)
        except ProtocolError as exc:
            self.abort(exc.message)
            return
        # only the handshake's Auth comes out here, before any request can be running
        if self.transport is not None and (out := self.conn.data_to_send()):
            self.transport.write(out)

    def eof_received(self) -> bool | None:
        self.conn.receive_data(b"")
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.server._connections.discard(self)
        if self._timer is not None:
            self._timer.cancel()
        for task in self.tasks:
            task.cancel()
        self._writable.set()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    # -- helpers ---------------------------------------------------------------------

    def _on_event(self, event: WireEvent) -> None:
        if isinstance(event, Authenticated):
            if self._timer is not None:
                self._timer.cancel()
            self.peer_node = event.peer_node
            log.debug("peer %s (%s) authenticated", self.peer, event.peer_node)
            return
        if isinstance(event, CancelRead):
            waiting = self._unanswered.pop(event.request_id, None)
            if waiting is not None:
                waiting.cancel()
                self.server.reads_cancelled += 1
            return
        if not isinstance(event, StatRequest | ReadRequest | Ping) and (
            type(event) not in self.server.handlers
        ):
            raise ProtocolError(f"a server does not accept {type(event).__name__}")
        task = asyncio.get_running_loop().create_task(self._handle(event))
        self.tasks.add(task)
        if isinstance(event, ReadRequest):
            self._unanswered[event.request_id] = task
        task.add_done_callback(self._task_done)
        if len(self.tasks) >= self.server.max_in_flight and not self._paused_reading:
            self._paused_reading = True
            assert self.transport is not None
            self.transport.pause_reading()

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            self.abort(f"answer failed: {exc!r}")
        if self._paused_reading and len(self.tasks) < self.server.max_in_flight:
            self._paused_reading = False
            if self.transport is not None and not self.transport.is_closing():
                self.transport.resume_reading()

    def _handshake_expired(self) -> None:
        self.abort("no authentication within the handshake timeout")

    def abort(self, reason: str, level: int = logging.WARNING) -> None:
        if self.transport is not None and not self.transport.is_closing():
            log.log(level, "closing peer connection from %s: %s", self.peer, reason)
            self.transport.close()

    async def closed(self) -> None:
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _send(self, event: WireEvent) -> None:
        async with self._write_lock:
            assert self.transport is not None
            self.transport.write(self.conn.send(event))
            await self._writable.wait()

    # -- answering -------------------------------------------------------------------

    async def _handle(self, event: WireEvent) -> None:
        if isinstance(event, Ping):
            await self._send(Pong(event.opaque))
        elif isinstance(event, StatRequest):
            await self._send(self._stat(event))
        elif isinstance(event, ReadRequest):
            await self._read(event)
        else:
            await self._custom(event)

    async def _custom(self, event: WireEvent) -> None:
        handler = self.server.handlers[type(event)]
        request_id = getattr(event, "request_id", None)
        try:
            answer = await handler(event, self.peer_node)
        except ShoalError as exc:
            if request_id is None:
                log.warning("handling %s from %s: %s", type(event).__name__, self.peer, exc)
                return
            answer = ErrorResponse(request_id, ErrorCode.INTERNAL, exc.message)
        if answer is not None:
            await self._send(answer)

    def _stat(self, req: StatRequest) -> WireEvent:
        start = time.perf_counter()
        with self.server.audit.timed(RPC_STAT, req.digest) as rec:
            info = self.server.store.lookup(req.digest)
            if info is None:
                rec.size = -1
                return ErrorResponse(req.request_id, ErrorCode.NOT_FOUND, "blob not here")
            rec.size = info.size
        if self.server.metrics is not None:
            self.server.metrics.record(MetricType.PEER, 0, time.perf_counter() - start)
        return _stat_response(req.request_id, info)

    async def _read(self, req: ReadRequest) -> None:
        server, store = self.server, self.server.store
        start = time.perf_counter()
        with server.audit.timed(RPC_PREAD, req.digest, req.offset) as rec:
            try:
                await self._wait_for_blob(req.digest)
                with store.lease(req.digest) as info:
                    index = req.offset // info.piece_size
                    if await self._wait_for_range(info, req):
                        await server.throttle.consume(req.length)
                        async with self._write_lock:
                            if self._unanswered.pop(req.request_id, None) is None:
                                return  # cancelled while waiting for the lock
                            await self._stream_piece(info, req, index)
                        self.server.passed_on += 1
                        if self.server.metrics is not None:
                            self.server.metrics.inc(PASSED_ON, PASSED_ON_HELP)
                    elif not await self._send_present(info, req, index):
                        return  # cancelled while waiting for the lock
            except ShoalError as exc:
                rec.size = -1
                if self._unanswered.pop(req.request_id, None) is not None:
                    await self._send(_error_for(req.request_id, exc))
                return
            rec.size = req.length
        self._served(req, start)

    async def _send_present(self, info: BlobInfo, req: ReadRequest, index: int) -> bool:
        """A range whose every piece is here: from memory if the store holds the piece
        there, else by ``sendfile`` from the page cache. False if cancelled before the
        answer started."""
        server, store = self.server, self.server.store
        src = await store.file_range(req.digest, req.offset, req.length)
        copy = None
        if not server.sendfile_native and not self.tls:
            copy = await store.read_range(req.digest, req.offset, req.length)
        await server.throttle.consume(req.length)
        async with self._write_lock:
            if self._unanswered.pop(req.request_id, None) is None:
                return False
            with store.piece_buffer(req.digest, index) as hot:
                whole = hot is not None and _whole_piece(hot, info, index, req)
                if self.tls and not whole:
                    # encrypted in user space: read it here, one piece per
                    # connection in memory at a time, not one per queued read
                    copy = await store.read_range(req.digest, req.offset, req.length)
                assert self.transport is not None
                data = Data(req.request_id, req.length)
                self.transport.write(self.conn.send(data))
                # from here on a failure can only close the connection
                server.sending += 1
                try:
                    if whole:
                        assert hot is not None
                        await self._send_view(hot.view)
                    else:
                        await self._send_body(src.file, src.offset, src.length, copy)
                    await self._writable.wait()
                finally:
                    server.sending -= 1
        return True

    def _served(self, req: ReadRequest, start: float) -> None:
        server = self.server
        log.debug("%s got %s @%d+%d", self.peer, req.digest[:19], req.offset, req.length)
        server.reads += 1
        server.bytes_sent += req.length
        if server.metrics is not None:
            server.metrics.record(MetricType.PEER, req.length, time.perf_counter() - start)

    async def _wait_for_blob(self, digest: str) -> None:
        """A child may ask before this peer has joined the blob's swarm itself (they
        join at the same moment): wait up to ``blob_wait`` s for the blob to appear, then
        the lease says ``NOT_FOUND``."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.server.blob_wait):
                await self.server.store.wait_blob(digest)

    async def _wait_for_range(self, info: BlobInfo, req: ReadRequest) -> bool:
        """Until the range can be sent; True if it is one piece still arriving whose
        verified head is here (``_stream_piece``), False if every piece is present."""
        if req.offset < 0 or req.length <= 0 or req.offset + req.length > info.size:
            raise PieceMissingError(f"{req.digest}: range {req.offset}+{req.length} outside blob")
        first = req.offset // info.piece_size
        last = (req.offset + req.length - 1) // info.piece_size
        missing = [i for i in range(first, last + 1) if not info.has(i)]
        if not missing:
            return False
        log.debug("%s asks %s pieces %s not here yet: waiting", self.peer, req.digest[:19], missing)
        whole = req.offset == first * info.piece_size and req.length == info.piece_length(first)
        try:
            async with asyncio.timeout(self.server.piece_wait):
                if whole:
                    await self.server.store.wait_streamable(req.digest, first, peer=self.peer_node)
                    return not self.server.store.has_piece(req.digest, first)
                for index in missing:
                    await self.server.store.wait_piece(req.digest, index)
        except TimeoutError as exc:
            raise PieceMissingError(
                f"{req.digest}: pieces {missing} did not arrive in {self.server.piece_wait}s"
            ) from exc
        return False

    async def _stream_piece(self, info: BlobInfo, req: ReadRequest, index: int) -> None:
        """Send a piece while it arrives: its verified bytes as they grow (a fetch here
        checks it chunk by chunk, ``PieceStore.stage_piece(verified=True)``), the rest
        from the store once it lands. If another fetch of it takes over, from that one's
        bytes (the same bytes: the piece is content-addressed). The ``Data`` header is
        out before the body is: a piece that stops arriving (``piece_wait`` s without a
        byte, or abandoned) can only close the connection."""
        store, transport = self.server.store, self.transport
        assert transport is not None
        transport.write(self.conn.send(Data(req.request_id, req.length)))
        self.server.sending += 1
        sent = 0
        try:
            while sent < req.length:
                with store.piece_buffer(req.digest, index) as hot:
                    while hot is not None and streamable(hot, self.peer_node):
                        if hot.filled <= sent and not await hot.more(sent):
                            break  # it left memory: stored, or another fetch goes on
                        upto = min(hot.filled, sent + TLS_STEP)
                        transport.write(hot.view[sent:upto])
                        await self._writable.wait()
                        if (sent := upto) == req.length:
                            return
                if store.has_piece(req.digest, index):  # ``info`` is a snapshot
                    await self._send_stored(req, sent)
                    return
                try:
                    async with asyncio.timeout(self.server.piece_wait):
                        await store.wait_streamable(
                            req.digest, index, after=sent, peer=self.peer_node
                        )
                except (TimeoutError, ShoalError) as exc:
                    raise _StreamBroken(f"piece {index} of {req.digest} stopped coming") from exc
        finally:
            self.server.sending -= 1

    async def _send_stored(self, req: ReadRequest, sent: int) -> None:
        """The rest of a streamed piece, from the store it landed in."""
        store = self.server.store
        try:
            src = await store.file_range(req.digest, req.offset + sent, req.length - sent)
            copy = None
            if not self.server.sendfile_native or self.tls:
                copy = await store.read_range(req.digest, req.offset + sent, req.length - sent)
            await self._send_body(src.file, src.offset, src.length, copy)
            await self._writable.wait()
        except ShoalError as exc:
            raise _StreamBroken(f"the rest of {req.digest} @{req.offset}: {exc}") from exc

    async def _send_view(self, view: memoryview) -> None:
        """A piece the store still holds in memory (it was written with ``O_DIRECT``,
        so no page-cache copy exists: ``sendfile`` would read it back from disk, on the
        event loop), in socket-sized steps; the store keeps it pinned meanwhile."""
        assert self.transport is not None
        for at in range(0, len(view), TLS_STEP):
            self.transport.write(view[at : at + TLS_STEP])
            await self._writable.wait()

    def _sendfile_now(self, file: Any, offset: int, length: int) -> int:
        """As much of the body as the socket takes right now, by one ``sendfile`` on it.

        With a send buffer that holds a piece (``SEND_BUFFER``) that is usually all of
        it: one syscall, where ``loop.sendfile`` pauses reading, sends, arms a writer,
        waits for the socket to drain, disarms and resumes (4 ``epoll_ctl`` and an
        ``epoll_wait`` per piece, issue 13). Only when nothing waits in the transport's
        own buffer (the header went straight out), never under TLS; the rest, if any,
        goes by ``loop.sendfile``."""
        transport = self.transport
        if (
            transport is None
            or transport.get_write_buffer_size()
            or transport.get_extra_info("sslcontext") is not None
        ):
            return 0
        sock = transport.get_extra_info("socket")
        if sock is None:
            return 0
        try:
            return os.sendfile(sock.fileno(), file.fileno(), offset, length)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError:
            return 0  # loop.sendfile below reports it the usual way

    async def _send_body(self, file: Any, offset: int, length: int, copy: bytes | None) -> None:
        assert self.transport is not None
        if copy is None:
            sent = self._sendfile_now(file, offset, length)
            offset, length = offset + sent, length - sent
            if not length:
                return
            try:
                loop = asyncio.get_running_loop()
                await loop.sendfile(self.transport, file, offset, length, fallback=False)
                return
            except (NotImplementedError, RuntimeError) as exc:
                if self.transport.is_closing():
                    raise ConnectionError("connection closed during sendfile") from exc
                log.warning("sendfile unavailable (%s); copying through Python", exc)
                self.server.sendfile_native = False
                copy = os.pread(file.fileno(), length, offset)
        if not self.tls:
            self.transport.write(copy)
            return
        # through TLS a write is encrypted at once, and what the socket does not take
        # is copied into the transport's buffer: in socket-sized steps it mostly takes
        # all (the sender measured 1.41 -> 1.19 ns/B, bench/peer_throughput.py --tls)
        view = memoryview(copy)
        for at in range(0, len(view), TLS_STEP):
            self.transport.write(view[at : at + TLS_STEP])
            await self._writable.wait()


class _StreamBroken(Exception):
    """A body under way cannot be finished: the connection closes (``_task_done``)."""


def _whole_piece(hot: HotPiece, info: BlobInfo, index: int, req: ReadRequest) -> bool:
    """The read is exactly one piece, and the store's copy of it in memory is stored and
    hashed (a staged one, still arriving from the origin, is for the runtime only)."""
    return (
        not hot.staged
        and hot.filled == len(hot.view)
        and req.offset == index * info.piece_size
        and req.length == info.piece_length(index)
    )


def _large_send_buffer(transport: asyncio.BaseTransport) -> None:
    """A socket send buffer that holds a whole piece: ``sendfile`` then moves a 4 MiB
    piece in one call instead of returning at every socket-full (each a trip through the
    event loop: remove the writer, wait, add it again)."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)


def _congestion(transport: asyncio.BaseTransport, name: str) -> bool:
    """Set the connection's congestion control (``P2PConfig.congestion``); False, and
    said, when this process may not use it (``tcp_allowed_congestion_control``). BBR,
    the system default on many machines, kept shallow switch queues full: at N=32 on
    20 ms queues a root retransmitted 61,586-68,284 segments in a run against 108-435
    with cubic, its control answers were lost behind them and agents fell back to the
    origin (docs/bench.md)."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return True
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, name.encode())
    except OSError as exc:
        log.warning("P2PConfig.congestion %s not used: %s", name, exc.strerror or exc)
        return False
    return True


def _stat_response(request_id: int, info: BlobInfo) -> StatResponse:
    hashes = tuple(h or b"" for h in info.hashes)
    return StatResponse(request_id, info.size, info.piece_size, info.complete, info.present, hashes)


def _error_for(request_id: int, exc: ShoalError) -> ErrorResponse:
    if isinstance(exc, PieceMissingError):
        code = ErrorCode.PIECE_MISSING
    elif isinstance(exc, BlobUnknownError):
        code = ErrorCode.NOT_FOUND
    else:
        code = ErrorCode.INTERNAL
    return ErrorResponse(request_id, code, exc.message)
