"""One peer connection's protocol state: bytes in, events out; events in, bytes out.

No IO happens here (h11's rule): the asyncio layer in ``shoal.peer`` feeds received
bytes to ``receive_data``, takes events from ``next_event``, sends what ``send`` and
``data_to_send`` return. That keeps every protocol rule testable by pairing two
``Connection`` objects in memory.

The handshake, as a table (each side runs the same machine; ``role`` only changes the
label under the MAC so that a side's proof cannot be reflected back at it):

| state  | on                     | do                                   | next   |
|--------|------------------------|--------------------------------------|--------|
| HELLO  | (start)                | queue our Hello(nonce, node)         | HELLO  |
| HELLO  | peer Hello             | queue Auth(mac_ours)                 | AUTH   |
| AUTH   | peer Auth, MAC ok      | emit Authenticated(peer node)        | OPEN   |
| AUTH   | peer Auth, MAC bad     | raise AuthFailedError                | CLOSED |
| OPEN   | any registered message | emit it                              | OPEN   |
| any    | anything else, EOF     | raise ProtocolError / emit nothing   | CLOSED |

``mac_ours = HMAC-SHA256(secret, "shoal/1 " + role + our nonce + peer nonce)``. Both
nonces are fresh random, so a recorded handshake cannot be replayed, and neither side
sends a request before it has verified the other.

``Data`` bodies are not buffered: after a ``Data`` header the caller either takes the
body as ``DataChunk`` events (simple) or moves it straight into its own buffer with
``read_body_into`` / ``body_received`` (no copy through this object).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets

from shoal.wire import codec
from shoal.wire.codec import AuthFailedError, ProtocolError
from shoal.wire.events import (
    NEED_DATA,
    Auth,
    Authenticated,
    Data,
    DataChunk,
    Hello,
    NeedData,
    WireEvent,
)


class Role(enum.Enum):
    CLIENT = "client"
    SERVER = "server"


class State(enum.Enum):
    HELLO = "HELLO"
    AUTH = "AUTH"
    OPEN = "OPEN"
    CLOSED = "CLOSED"


def handshake_mac(secret: bytes, role: Role, own_nonce: bytes, peer_nonce: bytes) -> bytes:
    msg = b"shoal/1 " + role.value.encode() + own_nonce + peer_nonce
    return hmac.new(secret, msg, hashlib.sha256).digest()


class Connection:
    def __init__(
        self, role: Role, secret: bytes, *, node: str = "", nonce: bytes | None = None
    ) -> None:
        if not secret:
            raise ValueError("a cluster secret is required")
        self.role = role
        self.node = node
        self.state = State.HELLO
        self.peer_node = ""
        self._secret = secret
        self._nonce = nonce if nonce is not None else secrets.token_bytes(codec.NONCE_SIZE)
        self._peer_nonce = b""
        self._buf = bytearray()
        self._eof = False
        self._out: list[bytes] = [codec.encode(Hello(self._nonce, node))]
        self._body_id = 0
        self.body_remaining = 0
        self.close_reason = ""

    # -- receiving -----------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed received bytes; ``b""`` means the peer closed its side."""
        if not data:
            self._eof = True
        else:
            self._buf += data

    def next_event(self) -> WireEvent | NeedData:
        """The next complete event, or ``NEED_DATA``; raises ``ProtocolError`` on abuse."""
        if self.state is State.CLOSED:
            return NEED_DATA
        try:
            return self._next()
        except ProtocolError as exc:
            self.state = State.CLOSED
            self.close_reason = exc.message
            raise

    def _next(self) -> WireEvent | NeedData:
        while True:
            if self.body_remaining:
                if not self._buf:
                    return self._need()
                n = min(len(self._buf), self.body_remaining)
                chunk = bytes(self._buf[:n])
                del self._buf[:n]
                self.body_remaining -= n
                return DataChunk(self._body_id, chunk)
            if len(self._buf) < codec.HEADER_SIZE:
                return self._need()
            magic, version, code, request_id, length = codec.HEADER.unpack_from(self._buf)
            if magic != codec.MAGIC:
                raise ProtocolError(f"bad magic {bytes(magic)!r}")
            if version != codec.VERSION:
                raise ProtocolError(f"unsupported protocol version {version}")
            spec = codec.spec_for_code(code)
            if spec is None:
                raise ProtocolError(f"unknown message type {code:#04x}")
            if length > spec.max_payload:
                raise ProtocolError(
                    f"{spec.cls.__name__} of {length} bytes exceeds {spec.max_payload}"
                )
            if spec.handshake == (self.state is State.OPEN):
                raise ProtocolError(f"{spec.cls.__name__} not allowed in state {self.state.value}")
            if spec.cls is Data:
                del self._buf[: codec.HEADER_SIZE]
                self._body_id, self.body_remaining = request_id, length
                return Data(request_id, length)
            if len(self._buf) < codec.HEADER_SIZE + length:
                return self._need()
            payload = memoryview(bytes(self._buf[codec.HEADER_SIZE : codec.HEADER_SIZE + length]))
            del self._buf[: codec.HEADER_SIZE + length]
            event = spec.decode(request_id, payload)
            if isinstance(event, Hello):
                self._on_hello(event)
                continue
            if isinstance(event, Auth):
                return self._on_auth(event)
            return event

    def _need(self) -> NeedData:
        if self._eof:
            mid = " in the middle of a frame" if self._buf or self.body_remaining else ""
            self.state = State.CLOSED
            self.close_reason = f"peer closed{mid}"
            if mid:
                raise ProtocolError(self.close_reason)
        return NEED_DATA

    def _on_hello(self, hello: Hello) -> None:
        if self.state is not State.HELLO:
            raise ProtocolError("second hello")
        if hello.nonce == self._nonce:
            raise AuthFailedError("peer echoed our nonce")
        self._peer_nonce = hello.nonce
        self.peer_node = hello.node
        mac = handshake_mac(self._secret, self.role, self._nonce, self._peer_nonce)
        self._out.append(codec.encode(Auth(mac)))
        self.state = State.AUTH

    def _on_auth(self, auth: Auth) -> Authenticated:
        if self.state is not State.AUTH:
            raise ProtocolError("auth before hello")
        peer_role = Role.SERVER if self.role is Role.CLIENT else Role.CLIENT
        want = handshake_mac(self._secret, peer_role, self._peer_nonce, self._nonce)
        if not hmac.compare_digest(want, auth.mac):
            raise AuthFailedError(f"peer {self.peer_node or '?'} failed authentication")
        self.state = State.OPEN
        return Authenticated(self.peer_node)

    # -- receiving a body in place -------------------------------------------------

    @property
    def buffered(self) -> int:
        """Received bytes not yet turned into events."""
        return len(self._buf)

    def read_body_into(self, dest: memoryview) -> int:
        """Move already-buffered body bytes into ``dest``; return how many."""
        n = min(len(self._buf), self.body_remaining, len(dest))
        if n:
            dest[:n] = self._buf[:n]
            del self._buf[:n]
            self.body_remaining -= n
        return n

    def body_received(self, n: int) -> None:
        """The caller read ``n`` body bytes from the socket straight into its buffer."""
        if not 0 <= n <= self.body_remaining or self._buf:
            raise ValueError("body bytes out of step with the connection")
        self.body_remaining -= n

    # -- sending -------------------------------------------------------------------

    def send(self, event: WireEvent) -> bytes:
        """Bytes of ``event`` (a ``Data`` header only: the caller sends the body)."""
        if self.state is not State.OPEN:
            raise ProtocolError(f"cannot send {type(event).__name__} in state {self.state.value}")
        if codec.spec_for(event).handshake:
            raise ProtocolError("handshake frames are sent by the connection itself")
        return codec.encode(event)

    def data_to_send(self) -> bytes:
        """Handshake bytes this side owes the peer (its Hello, then its Auth)."""
        out, self._out = b"".join(self._out), []
        return out

    def __repr__(self) -> str:
        return (
            f"<Connection {self.role.value} {self.state.value} peer={self.peer_node or '?'} "
            f"buffered={len(self._buf)} body_remaining={self.body_remaining}>"
        )
