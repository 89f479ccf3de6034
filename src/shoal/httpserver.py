"""The HTTP server every port of shoal's long-running roles runs on.

Why a server of our own around aiohttp's: a port on a node's network is open to every
pod. aiohttp waits forever for a request's headers (a slow-loris client holds a
connection, and with it a file descriptor, as long as it likes), accepts connections
until the process runs out of descriptors, answers a malformed request with plain text
that echoes it, and logs a traceback for each. ``serve_app`` keeps aiohttp's request
handling and adds, per listener:

- a **header timeout** (first byte of a request to its last header line) and an
  **idle timeout** (a kept-alive connection without a request);
- a **cap on open connections per client address and in total**: a client at its cap
  is answered ``429`` and closed at once; at the total cap the oldest idle connection of
  the client holding most is closed to make room, so one noisy address cannot lock
  everyone else out;
- **OCI error bodies** (JSON, ``Docker-Distribution-API-Version``) on every answer the
  parser gives, and **one rate-limited log line** per bad request instead of a traceback;
- TLS done after the gate, with the header timeout for the handshake.

An application says how it wants to be served through its ``AppKey`` s ``SERVER_LIMITS``
and ``TLS_CONTEXT``, so the role that composes it does not need to know.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import resource
import socket
import ssl
import time
from asyncio import sslproto
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from shoal.config import ProxyConfig
from shoal.errors import ShoalError, describe_os_error

log = logging.getLogger("shoal.http")


class LogLimiter:
    """At most ``burst`` lines per ``interval`` seconds; the rest are counted and the
    count rides on the next line that gets out. A flood of bad requests costs one line
    a second, not one per request."""

    def __init__(self, logger: logging.Logger, *, interval: float = 1.0, burst: int = 5) -> None:
        self.logger = logger
        self.interval = interval
        self.burst = burst
        self._window = 0.0
        self._used = 0
        self.suppressed = 0

    def __repr__(self) -> str:
        return (
            f"<LogLimiter {self.logger.name} [{self._used}/{self.burst} | {self.suppressed} held]>"
        )

    def log(
        self, level: int, msg: str, *args: object, exc_info: BaseException | None = None
    ) -> bool:
        if not self.logger.isEnabledFor(level):
            return False  # a line nobody sees takes no room from one they would
        now = time.monotonic()
        if now - self._window >= self.interval:
            self._window, self._used = now, 0
        if self._used >= self.burst:
            self.suppressed += 1
            return False
        self._used += 1
        if self.suppressed:
            msg = f"{msg} (and {self.suppressed} more like it)"
            self.suppressed = 0
        self.logger.log(level, msg, *args, exc_info=exc_info)
        return True


#: pending connections a listener queues (the kernel caps it at net.core.somaxconn)
LISTEN_BACKLOG = 4096
#: connections accepted per wakeup of the loop (asyncio's "backlog" argument)
ACCEPT_BATCH = 32


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """What one client may hold of a listener (the ``ProxyConfig`` keys of the same
    names; every field in seconds or connections)."""

    header_timeout: float = 10.0
    idle_timeout: float = 60.0
    #: 0: three quarters of the open-file limit
    max_connections: int = 0
    #: 0: no per-client cap
    max_per_client: int = 256
    #: bytes of a request body buffered before reading from the socket pauses (also
    #: bounds what TLS decrypts ahead of the application)
    read_bufsize: int = 1 << 16

    @classmethod
    def of(
        cls, proxy: ProxyConfig, *, per_client: int = 256, read_bufsize: int = 1 << 16
    ) -> ServerLimits:
        """The ``ProxyConfig`` keys; ``per_client`` is the role's default for
        ``maxConnectionsPerClient: 0``."""
        return cls(
            header_timeout=proxy.header_timeout,
            idle_timeout=proxy.idle_timeout,
            max_connections=proxy.max_connections,
            max_per_client=proxy.max_connections_per_client or per_client,
            read_bufsize=read_bufsize,
        )

    def total(self) -> int:
        if self.max_connections:
            return self.max_connections
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY:
            soft = 1 << 20
        return max(64, soft * 3 // 4)


SERVER_LIMITS = web.AppKey("shoal.server_limits", ServerLimits)
TLS_CONTEXT = web.AppKey("shoal.tls_context", ssl.SSLContext)


def _canned(status: int, reason: str, code: str, message: str) -> bytes:
    body = json.dumps({"errors": [{"code": code, "message": message, "detail": None}]}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
        f"Docker-Distribution-API-Version: registry/2.0\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


_PER_CLIENT_FULL = _canned(
    429, "Too Many Requests", "TOOMANYREQUESTS", "too many open connections from this address"
)
_SERVER_FULL = _canned(503, "Service Unavailable", "UNAVAILABLE", "too many open connections")
#: OCI codes for the parser's and aiohttp's own answers
_CODES = {400: "UNSUPPORTED", 404: "NAME_UNKNOWN", 405: "UNSUPPORTED", 413: "SIZE_INVALID"}


class _Gate:
    """The connections of one listener, by client address."""

    def __init__(self, limits: ServerLimits) -> None:
        self.limits = limits
        self.total = limits.total()
        self.by_client: dict[str, dict[_Handler, None]] = {}
        self.open = 0
        self.refused = 0
        self.evicted = 0
        self.timed_out = 0
        self.log = LogLimiter(log)

    def __repr__(self) -> str:
        return (
            f"<Gate [{self.open}/{self.total} open, {len(self.by_client)} clients | "
            f"refused {self.refused}, evicted {self.evicted}, timed out {self.timed_out}]>"
        )

    def admit(self, client: str, handler: _Handler) -> bytes | None:
        """None: admitted; else the answer to send before closing."""
        mine = self.by_client.get(client, {})
        if self.limits.max_per_client and len(mine) >= self.limits.max_per_client:
            self.refused += 1
            self.log.log(
                logging.WARNING, "refused a connection from %s: %d open", client, len(mine)
            )
            return _PER_CLIENT_FULL
        if self.open >= self.total and not self._evict(client):
            self.refused += 1
            self.log.log(
                logging.WARNING, "refused a connection from %s: %d open", client, self.open
            )
            return _SERVER_FULL
        self.by_client.setdefault(client, {})[handler] = None
        self.open += 1
        return None

    def _evict(self, newcomer: str) -> bool:
        """Close the oldest idle connection of the client holding the most (not the
        newcomer's own: a client at the cap waits for its own connections)."""
        ranked = sorted(self.by_client.items(), key=lambda kv: len(kv[1]), reverse=True)
        for client, handlers in ranked:
            if client == newcomer:
                continue
            for victim in handlers:
                if not victim.in_request:
                    self.evicted += 1
                    self.log.log(
                        logging.WARNING, "closed an idle connection of %s to make room", client
                    )
                    victim.shut()
                    victim.release()  # now: its close completes only on the next turn
                    return True
            break
        return False

    def release(self, client: str, handler: _Handler) -> None:
        mine = self.by_client.get(client)
        if mine is None or handler not in mine:
            return
        del mine[handler]
        self.open -= 1
        if not mine:
            del self.by_client[client]


class _Handler(RequestHandler):
    """aiohttp's handler, plus the gate, the header timer and OCI error answers."""

    def __init__(self, manager: web.Server, *, gate: _Gate, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self.gate = gate
        self.client = ""
        self.in_request = False
        self.admitted = False
        self.started = False
        self._header_timer: asyncio.TimerHandle | None = None
        #: the connection opened with a TLS record (a client trying HTTPS first)
        self.tls_hello: bool | None = None

    def admit(self, transport: asyncio.BaseTransport, *, answer: bool) -> bool:
        """Count this connection at the gate; refused ones are closed (with a canned
        HTTP answer when ``answer``: not before a TLS handshake)."""
        peer = transport.get_extra_info("peername")
        self.client = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        refusal = self.gate.admit(self.client, self)
        if refusal is None:
            self.admitted = True
            return True
        assert isinstance(transport, asyncio.WriteTransport)
        if answer:
            transport.write(refusal)
            transport.close()
        else:
            transport.abort()
        return False

    def release(self) -> None:
        if self.admitted:
            self.admitted = False
            self.gate.release(self.client, self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self.admitted and not self.admit(transport, answer=True):
            return
        self.started = True
        if transport.get_extra_info("sslcontext") is not None:
            # decrypt no further ahead than the body buffer: an unread body stays small
            limit = self.gate.limits.read_bufsize
            transport.set_read_buffer_limits(high=2 * limit, low=limit)  # type: ignore[attr-defined]
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_header_timer()
        self.release()
        if self.started:
            self.started = False
            super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.tls_hello is None and data:
            self.tls_hello = data.startswith(b"\x16\x03")
        if data and not self.in_request and self._header_timer is None:
            loop = asyncio.get_running_loop()
            self._header_timer = loop.call_later(
                self.gate.limits.header_timeout, self._headers_late
            )
        super().data_received(data)

    def _headers_late(self) -> None:
        self._header_timer = None
        if self.in_request:
            return
        self.gate.timed_out += 1
        self.gate.log.log(
            logging.WARNING,
            "closed a connection from %s: no complete request within %.0f s",
            self.client,
            self.gate.limits.header_timeout,
        )
        self.shut()

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def shut(self) -> None:
        """Close now, request or not (``force_close`` without waiting for a handler)."""
        transport = self.transport
        self.force_close()
        if transport is not None:
            transport.abort()

    def request_started(self) -> None:
        self._cancel_header_timer()
        self.in_request = True

    def request_done(self) -> None:
        self.in_request = False

    def handle_error(
        self,
        request: Any,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """The parser's (and a crashed handler's) answer: an OCI error body, one line."""
        if request.writer.output_size > 0:
            raise ConnectionError("the response had started; the connection is cut")
        if status >= 500:
            self.gate.log.log(
                logging.ERROR,
                "HTTP %d answering %s %s from %s: %s",
                status,
                request.method,
                _printable(request.rel_url.raw_path),
                self.client,
                _describe(exc),
                exc_info=exc,
            )
            code, text = ("UNAVAILABLE", "timed out") if status == 504 else ("UNKNOWN", "internal")
        else:
            # a client that tries HTTPS first on a plain-HTTP mirror (skopeo and podman
            # with an insecure mirror do, on every pull) is not worth a warning
            self.gate.log.log(
                logging.DEBUG if self.tls_hello else logging.WARNING,
                "bad request from %s (HTTP %d): %s",
                self.client,
                status,
                _describe(exc) if exc is not None else _printable(message or ""),
            )
            code, text = _CODES.get(status, "UNSUPPORTED"), "malformed HTTP request"
        body = {"errors": [{"code": code, "message": text, "detail": None}]}
        resp = web.json_response(
            body, status=status, headers={"Docker-Distribution-API-Version": "registry/2.0"}
        )
        resp.force_close()
        return resp

    def log_exception(self, *args: Any, **kw: Any) -> None:
        exc = kw.get("exc_info")
        message = str(args[0] % args[1:]) if args else "error"
        self.gate.log.log(
            logging.ERROR,
            "%s (%s): %s",
            message,
            self.client,
            _describe(exc if isinstance(exc, BaseException) else None),
            exc_info=exc if isinstance(exc, BaseException) else None,
        )


def _printable(text: str, limit: int = 120) -> str:
    """One line, control bytes escaped, at most ``limit`` characters."""
    return repr(" ".join(text.split())[:limit])[1:-1]


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "-"
    what = getattr(exc, "message", None) or str(exc)
    return f"{type(exc).__name__}: {_printable(str(what))}"


@web.middleware
async def _request_clock(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Tells the connection a request is being handled: its header clock stops."""
    proto = request.protocol
    if isinstance(proto, _Handler):
        proto.request_started()
        try:
            return await handler(request)
        finally:
            proto.request_done()
    return await handler(request)


class _ServerTLS(sslproto.SSLProtocol):
    """asyncio's TLS protocol with a 32 KiB read buffer (asyncio allocates 256 KiB per
    connection, which made 120 unauthenticated connections cost a root 33 MiB)."""

    max_size = 32 * 1024


class _TLSAcceptor(asyncio.Protocol):
    """A TLS connection is counted from the moment it is accepted, and given
    ``header_timeout`` for its handshake: asyncio's own TLS server would spend a
    handshake (and its buffers) on every connection before the gate could say no, and
    wait 60 s for a ClientHello that never comes. After the gate, the connection is
    handed to asyncio's TLS protocol exactly as ``create_server(ssl=...)`` would (the
    HTTP handler is connected when the handshake is done, before any data)."""

    def __init__(self, server: _Server, tls: ssl.SSLContext) -> None:
        self.server = server
        self.tls = tls

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        handler = self.server()
        assert isinstance(handler, _Handler) and isinstance(transport, asyncio.Transport)
        if not handler.admit(transport, answer=False):
            return
        loop = asyncio.get_running_loop()
        handshake: asyncio.Future[None] = loop.create_future()
        handshake.add_done_callback(lambda done: _handshake_done(done, handler))
        tls = _ServerTLS(
            loop,
            handler,
            self.tls,
            handshake,
            server_side=True,
            ssl_handshake_timeout=math.ceil(handler.gate.limits.header_timeout),
        )
        transport.set_protocol(tls)
        tls.connection_made(transport)

    def data_received(self, data: bytes) -> None:  # never: the TLS protocol took over
        pass


def _handshake_done(done: asyncio.Future[None], handler: _Handler) -> None:
    exc = None if done.cancelled() else done.exception()
    if exc is not None or done.cancelled():
        handler.gate.log.log(
            logging.INFO, "TLS handshake with %s failed: %s", handler.client, _describe(exc)
        )
        handler.release()


class _Site(web.BaseSite):
    """``TCPSite`` with the TLS handshake done by ``_TLSAcceptor``."""

    def __init__(
        self, runner: _Runner, host: str | None, port: int, tls: ssl.SSLContext | None
    ) -> None:
        super().__init__(runner, backlog=LISTEN_BACKLOG)
        self._host = host
        self._port = port
        self._tls = tls

    @property
    def name(self) -> str:
        return f"{'https' if self._tls else 'http'}://{self._host or '*'}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert isinstance(server, _Server)
        tls = self._tls
        factory: Callable[[], asyncio.BaseProtocol] = (
            server if tls is None else lambda: _TLSAcceptor(server, tls)
        )
        loop = asyncio.get_running_loop()
        # asyncio accepts up to ``backlog`` connections per wakeup before any of them
        # reaches the gate: a small batch, or a burst exhausts the descriptors first
        self._server = await loop.create_server(
            factory, self._host, self._port, backlog=ACCEPT_BATCH, reuse_address=True
        )
        # ... and a long queue in the kernel: a root takes the joins of every agent for
        # every layer at the same instant (32 agents x 5 blobs = 160 connects in the
        # bench); a backlog of 128 dropped SYNs and agents gave up on a healthy root
        for listener in self._server.sockets:
            with socket.socket(fileno=os.dup(listener.fileno())) as same:
                same.listen(LISTEN_BACKLOG)


class _Server(web.Server):
    def __init__(self, plain: web.Server, gate: _Gate, kwargs: dict[str, Any]) -> None:
        super().__init__(
            plain.request_handler,
            request_factory=plain.request_factory,
            handler_cancellation=plain.handler_cancellation,
            **kwargs,
        )
        self.gate = gate
        self._handler_kwargs = kwargs

    def __call__(self) -> RequestHandler:
        return _Handler(
            self, gate=self.gate, loop=asyncio.get_running_loop(), **self._handler_kwargs
        )


class _Runner(web.AppRunner):
    """aiohttp's runner whose server hands out ``_Handler`` s."""

    def __init__(self, app: web.Application, gate: _Gate, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.gate = gate
        self._handler_kwargs = kwargs

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()
        kwargs = {k: v for k, v in self._handler_kwargs.items() if k not in ("handle_signals",)}
        return _Server(plain, self.gate, kwargs)


async def serve_app(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Listen with ``app`` on ``host`` ("" = every IPv4 and IPv6 address) and ``port``
    (0 = kernel's choice); return the runner (to clean up) and the bound port."""
    limits = app.get(SERVER_LIMITS) or ServerLimits()
    tls = app.get(TLS_CONTEXT)
    app.middlewares.insert(0, _request_clock)
    gate = _Gate(limits)
    runner = _Runner(
        app,
        gate,
        access_log=None,
        handle_signals=False,
        keepalive_timeout=limits.idle_timeout,
        read_bufsize=limits.read_bufsize,
        # nobody reads a body we did not ask for: an unread one closes the connection
        lingering_time=0,
    )
    await runner.setup()
    site = _Site(runner, host or None, port, tls)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise ShoalError(describe_os_error(exc)) from exc
    bound: int = runner.addresses[0][1]
    return runner, bound


def gate_of(runner: web.AppRunner) -> _Gate | None:
    """The connection gate of a runner ``serve_app`` made (for tests and ``__repr__``)."""
    return runner.gate if isinstance(runner, _Runner) else None
