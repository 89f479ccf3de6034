"""Frame layout and the message table: how each event becomes bytes and back.

Every frame is a 12-byte header and a payload:

```
 0      2        3       4              8              12
 +------+--------+-------+--------------+--------------+----------------
 | "SH" | version| type  | request id   | payload len  | payload ...
 +------+--------+-------+--------------+--------------+----------------
   magic   u8 = 1   u8     u32 BE         u32 BE
```

Why this shape: a fixed header lets the reader check the type and the length against
that type's hard limit *before* buffering a byte of payload, so a hostile or broken
peer cannot make us allocate more than the limit. The ``Data`` payload is raw piece
bytes with no further framing, so the receiver can read it straight into the piece
buffer and the sender can ``sendfile`` it from disk.

Adding a message type is one ``register(...)`` call: a type code, the event class (a
frozen dataclass subclassing ``WireEvent``, with a ``request_id`` field if it is asked
or answered), its payload limit, an encoder, a decoder, and whether it is a response
(matched to the asker's pending request) or a request/one-way message (handed to the
receiver's handler: ``PeerServer(handlers=...)``, ``PeerClient(on_message=...)``).
Codes 0x01-0x0f are the handshake, 0x10-0x3f peer reads, 0x40-0x7e are free for the
swarm (register/announce/schedule), 0x7f is the error frame.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from shoal.errors import ShoalError
from shoal.wire.events import (
    Auth,
    CancelRead,
    Data,
    ErrorCode,
    ErrorResponse,
    Hello,
    Ping,
    Pong,
    ReadRequest,
    StatRequest,
    StatResponse,
    WireEvent,
)

MAGIC = b"SH"
VERSION = 1
HEADER = struct.Struct("!2sBBII")
HEADER_SIZE = HEADER.size

NONCE_SIZE = 32
MAC_SIZE = 32
HASH_SIZE = 32
MAX_NODE = 255
MAX_DIGEST = 100
MAX_MESSAGE = 1024
#: the piece store's limits (shoal.cache.layout), repeated because wire imports no cache
MAX_PIECES = 1 << 16
MAX_READ = 16 << 20
MAX_REQUEST_ID = 0xFFFFFFFF


class ProtocolError(ShoalError):
    """The peer sent something this protocol does not allow; close the connection."""

    http_status = 502


class AuthFailedError(ProtocolError):
    """The peer could not prove it holds the cluster secret."""

    http_status = 403


Encoder = Callable[[Any], bytes]
Decoder = Callable[[int, memoryview], WireEvent]


@dataclass(frozen=True, slots=True)
class MessageSpec:
    code: int
    cls: type[WireEvent]
    max_payload: int
    encode: Encoder
    decode: Decoder
    #: sent before authentication (only the handshake)
    handshake: bool = False
    #: an answer, matched to the asker's pending request by id (else: a request or a
    #: one-way message, handed to the receiver's handler)
    response: bool = False


_BY_CODE: dict[int, MessageSpec] = {}
_BY_CLASS: dict[type[WireEvent], MessageSpec] = {}


def register(spec: MessageSpec) -> MessageSpec:
    if not 0 < spec.code < 256 or spec.code in _BY_CODE or spec.cls in _BY_CLASS:
        raise ValueError(f"message code {spec.code:#x} / {spec.cls.__name__} already taken")
    _BY_CODE[spec.code] = spec
    _BY_CLASS[spec.cls] = spec
    return spec


def spec_for_code(code: int) -> MessageSpec | None:
    return _BY_CODE.get(code)


def spec_for(event: WireEvent) -> MessageSpec:
    spec = _BY_CLASS.get(type(event))
    if spec is None:
        raise TypeError(f"{type(event).__name__} is not a wire message")
    return spec


def is_response(event: WireEvent) -> bool:
    spec = _BY_CLASS.get(type(event))
    return spec is not None and spec.response


def frame(code: int, request_id: int, payload: bytes) -> bytes:
    return HEADER.pack(MAGIC, VERSION, code, request_id, len(payload)) + payload


def encode(event: WireEvent) -> bytes:
    """The whole frame for ``event`` (for ``Data``: the header only; the body follows)."""
    spec = spec_for(event)
    request_id = getattr(event, "request_id", 0)
    if not 0 <= request_id <= MAX_REQUEST_ID:
        raise ValueError(f"request id {request_id} out of range")
    if isinstance(event, Data):
        if not 0 <= event.length <= MAX_READ:
            raise ValueError(f"data length {event.length} out of range")
        return HEADER.pack(MAGIC, VERSION, spec.code, request_id, event.length)
    payload = spec.encode(event)
    if len(payload) > spec.max_payload:
        raise ValueError(f"{type(event).__name__} payload {len(payload)} > {spec.max_payload}")
    return frame(spec.code, request_id, payload)


# -- payload readers -----------------------------------------------------------------


class Reader:
    """Bounds-checked reads from one payload; any overrun is a ``ProtocolError``."""

    __slots__ = ("_buf", "_pos", "_what")

    def __init__(self, buf: memoryview, what: str) -> None:
        self._buf = buf
        self._pos = 0
        self._what = what

    def take(self, n: int) -> bytes:
        if n < 0 or self._pos + n > len(self._buf):
            raise ProtocolError(f"{self._what}: truncated payload")
        out = bytes(self._buf[self._pos : self._pos + n])
        self._pos += n
        return out

    def uint(self, fmt: str) -> int:
        st = struct.Struct("!" + fmt)
        (value,) = st.unpack(self.take(st.size))
        return int(value)

    def text(self, len_fmt: str, limit: int) -> str:
        n = self.uint(len_fmt)
        if n > limit:
            raise ProtocolError(f"{self._what}: string of {n} bytes > {limit}")
        try:
            return self.take(n).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError(f"{self._what}: string is not UTF-8") from exc

    def end(self) -> None:
        if self._pos != len(self._buf):
            raise ProtocolError(f"{self._what}: {len(self._buf) - self._pos} trailing bytes")


def _text(value: str, len_fmt: str, limit: int) -> bytes:
    raw = value.encode("utf-8")
    if len(raw) > limit:
        raise ValueError(f"string of {len(raw)} bytes > {limit}")
    return struct.pack("!" + len_fmt, len(raw)) + raw


# -- the built-in messages -----------------------------------------------------------


def _enc_hello(e: Hello) -> bytes:
    if len(e.nonce) != NONCE_SIZE:
        raise ValueError("nonce must be 32 bytes")
    return e.nonce + _text(e.node, "B", MAX_NODE)


def _dec_hello(_: int, buf: memoryview) -> Hello:
    r = Reader(buf, "hello")
    out = Hello(r.take(NONCE_SIZE), r.text("B", MAX_NODE))
    r.end()
    return out


def _enc_auth(e: Auth) -> bytes:
    if len(e.mac) != MAC_SIZE:
        raise ValueError("mac must be 32 bytes")
    return e.mac


def _dec_auth(_: int, buf: memoryview) -> Auth:
    r = Reader(buf, "auth")
    out = Auth(r.take(MAC_SIZE))
    r.end()
    return out


def _enc_opaque(e: Ping | Pong) -> bytes:
    if len(e.opaque) != 8:
        raise ValueError("ping payload must be 8 bytes")
    return e.opaque


def _dec_ping(_: int, buf: memoryview) -> Ping:
    r = Reader(buf, "ping")
    out = Ping(r.take(8))
    r.end()
    return out


def _dec_pong(_: int, buf: memoryview) -> Pong:
    r = Reader(buf, "pong")
    out = Pong(r.take(8))
    r.end()
    return out


def _enc_stat(e: StatRequest) -> bytes:
    return _text(e.digest, "B", MAX_DIGEST)


def _dec_stat(request_id: int, buf: memoryview) -> StatRequest:
    r = Reader(buf, "stat")
    out = StatRequest(request_id, r.text("B", MAX_DIGEST))
    r.end()
    return out


_STAT_FIXED = struct.Struct("!QIB")


def _enc_stat_ok(e: StatResponse) -> bytes:
    count = _check_geometry(e.size, e.piece_size, ValueError)
    if len(e.bitfield) != (count + 7) // 8:
        raise ValueError("bitfield length does not match the piece count")
    parts = [_STAT_FIXED.pack(e.size, e.piece_size, int(e.complete)), e.bitfield]
    if e.hashes is None:
        parts.append(b"\x00")
    else:
        if len(e.hashes) != count or any(len(h) not in (0, HASH_SIZE) for h in e.hashes):
            raise ValueError("hashes must be one 32-byte value (or b'') per piece")
        parts.append(b"\x01")
        parts.extend(h or bytes(HASH_SIZE) for h in e.hashes)
    return b"".join(parts)


def _dec_stat_ok(request_id: int, buf: memoryview) -> StatResponse:
    r = Reader(buf, "stat response")
    size, piece_size, complete = _STAT_FIXED.unpack(r.take(_STAT_FIXED.size))
    count = _check_geometry(size, piece_size, ProtocolError)
    if complete > 1:
        raise ProtocolError("stat response: complete flag is not 0 or 1")
    bitfield = r.take((count + 7) // 8)
    spare = len(bitfield) * 8 - count
    if spare and bitfield[-1] & ((1 << spare) - 1):
        raise ProtocolError("stat response: bitfield has spare bits set")
    flag = r.uint("B")
    hashes: tuple[bytes, ...] | None = None
    if flag == 1:
        zero = bytes(HASH_SIZE)
        hashes = tuple(b"" if h == zero else h for h in (r.take(HASH_SIZE) for _ in range(count)))
    elif flag != 0:
        raise ProtocolError("stat response: bad hashes flag")
    r.end()
    return StatResponse(request_id, size, piece_size, bool(complete), bitfield, hashes)


def _check_geometry(size: int, piece_size: int, err: type[Exception]) -> int:
    if piece_size <= 0 or piece_size > MAX_READ:
        raise err(f"piece size {piece_size} outside 1..{MAX_READ}")
    count = (size + piece_size - 1) // piece_size
    if count > MAX_PIECES:
        raise err(f"{count} pieces > {MAX_PIECES}")
    return count


_READ_FIXED = struct.Struct("!QI")


def _enc_read(e: ReadRequest) -> bytes:
    if not 0 <= e.length <= MAX_READ or e.offset < 0:
        raise ValueError(f"read of {e.length} bytes at {e.offset} out of range")
    return _READ_FIXED.pack(e.offset, e.length) + _text(e.digest, "B", MAX_DIGEST)


def _dec_read(request_id: int, buf: memoryview) -> ReadRequest:
    r = Reader(buf, "read")
    offset, length = _READ_FIXED.unpack(r.take(_READ_FIXED.size))
    if length > MAX_READ:
        raise ProtocolError(f"read: length {length} > {MAX_READ}")
    out = ReadRequest(request_id, r.text("B", MAX_DIGEST), offset, length)
    r.end()
    return out


def _enc_empty(_: Any) -> bytes:
    return b""


def _dec_cancel(request_id: int, buf: memoryview) -> CancelRead:
    Reader(buf, "cancel").end()
    return CancelRead(request_id)


def _enc_error(e: ErrorResponse) -> bytes:
    return struct.pack("!H", e.code) + _text(e.message[:MAX_MESSAGE], "H", MAX_MESSAGE * 4)


def _dec_error(request_id: int, buf: memoryview) -> ErrorResponse:
    r = Reader(buf, "error")
    raw = r.uint("H")
    try:
        code = ErrorCode(raw)
    except ValueError as exc:
        raise ProtocolError(f"error: unknown code {raw}") from exc
    out = ErrorResponse(request_id, code, r.text("H", MAX_MESSAGE * 4))
    r.end()
    return out


def _no_payload(_: Any) -> bytes:  # pragma: no cover - Data is encoded by ``encode``
    raise TypeError("Data has no payload encoder")


def _dec_data(request_id: int, buf: memoryview) -> Data:  # pragma: no cover
    raise TypeError("Data bodies are streamed, not decoded")


HELLO = register(MessageSpec(0x01, Hello, 1 + NONCE_SIZE + MAX_NODE, _enc_hello, _dec_hello, True))
AUTH = register(MessageSpec(0x02, Auth, MAC_SIZE, _enc_auth, _dec_auth, True))
PING = register(MessageSpec(0x03, Ping, 8, _enc_opaque, _dec_ping))
PONG = register(MessageSpec(0x04, Pong, 8, _enc_opaque, _dec_pong))
STAT = register(MessageSpec(0x10, StatRequest, 1 + MAX_DIGEST, _enc_stat, _dec_stat))
STAT_OK = register(
    MessageSpec(
        0x11,
        StatResponse,
        _STAT_FIXED.size + MAX_PIECES // 8 + 1 + MAX_PIECES * HASH_SIZE,
        _enc_stat_ok,
        _dec_stat_ok,
        response=True,
    )
)
READ = register(MessageSpec(0x12, ReadRequest, 12 + 1 + MAX_DIGEST, _enc_read, _dec_read))
DATA = register(MessageSpec(0x13, Data, MAX_READ, _no_payload, _dec_data, response=True))
CANCEL = register(MessageSpec(0x14, CancelRead, 0, _enc_empty, _dec_cancel))
ERROR = register(
    MessageSpec(0x7F, ErrorResponse, 2 + 2 + MAX_MESSAGE * 4, _enc_error, _dec_error, response=True)
)
