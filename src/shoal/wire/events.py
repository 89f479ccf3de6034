"""What goes over a peer connection, as values: frozen dataclasses compared by value.

Requests carry a ``request_id`` chosen by the side that asks; the answer (a response, a
``Data`` header followed by its body, or an ``ErrorResponse``) carries the same id, so
many requests can be in flight on one connection and answers can come in any order.
Handshake frames (``Hello``, ``Auth``) are consumed by ``Connection`` itself; the caller
sees ``Authenticated`` once the peer has proved it holds the cluster secret.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class WireEvent:
    """Base of every event; new message types (``codec.register``) subclass it too."""

    __slots__ = ()


class ErrorCode(enum.IntEnum):
    NOT_FOUND = 1  # no such blob here
    PIECE_MISSING = 2  # the blob is here but (part of) the range is not
    BAD_REQUEST = 3  # the request cannot be answered as asked (range outside the blob)
    BUSY = 4  # too much in flight; ask again later or elsewhere
    INTERNAL = 5  # a local failure (I/O error)
    PROTOCOL = 6  # connection-level: the peer broke the protocol; sent before closing


@dataclass(frozen=True, slots=True)
class Hello(WireEvent):
    nonce: bytes
    node: str


@dataclass(frozen=True, slots=True)
class Auth(WireEvent):
    mac: bytes


@dataclass(frozen=True, slots=True)
class Authenticated(WireEvent):
    """Not a frame: the peer's ``Auth`` checked out; requests may flow."""

    peer_node: str


@dataclass(frozen=True, slots=True)
class Ping(WireEvent):
    opaque: bytes


@dataclass(frozen=True, slots=True)
class Pong(WireEvent):
    opaque: bytes


@dataclass(frozen=True, slots=True)
class StatRequest(WireEvent):
    request_id: int
    digest: str


@dataclass(frozen=True, slots=True)
class StatResponse(WireEvent):
    request_id: int
    size: int
    piece_size: int
    complete: bool
    #: present pieces, ``Bitfield.to_bytes()`` layout (MSB first)
    bitfield: bytes
    #: sha256 per piece, ``b""`` where unknown; ``None`` if the peer sent none
    hashes: tuple[bytes, ...] | None = None

    @property
    def piece_count(self) -> int:
        return (self.size + self.piece_size - 1) // self.piece_size

    def has(self, index: int) -> bool:
        return 0 <= index < self.piece_count and bool(
            self.bitfield[index >> 3] & (0x80 >> (index & 7))
        )


@dataclass(frozen=True, slots=True)
class ReadRequest(WireEvent):
    """Bytes ``offset .. offset+length-1`` of a blob; a piece is one such range."""

    request_id: int
    digest: str
    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class CancelRead(WireEvent):
    """The asker no longer wants the answer to its read ``request_id`` (one-way).

    A server that has not started that answer drops it and sends nothing; one whose
    ``Data`` header is out finishes the body (the asker discards it). Without this, a
    request the picker gave up on (a parent moved, a stall) still costs the parent's
    uplink: a queued cut-through read is served whenever its piece lands.
    """

    request_id: int


@dataclass(frozen=True, slots=True)
class Data(WireEvent):
    """Header of a read's answer: exactly ``length`` raw body bytes follow."""

    request_id: int
    length: int


@dataclass(frozen=True, slots=True)
class DataChunk(WireEvent):
    """Body bytes of the current ``Data``, for callers that do not receive in place."""

    request_id: int
    data: bytes


@dataclass(frozen=True, slots=True)
class ErrorResponse(WireEvent):
    request_id: int
    code: ErrorCode
    message: str


class NeedData(enum.Enum):
    """``next_event()`` has nothing complete yet; feed more bytes."""

    NEED_DATA = "NEED_DATA"


NEED_DATA = NeedData.NEED_DATA
