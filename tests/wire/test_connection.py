from __future__ import annotations

import struct
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.wire import (
    HEADER_SIZE,
    MAX_READ,
    NEED_DATA,
    Authenticated,
    AuthFailedError,
    CancelRead,
    Connection,
    Data,
    DataChunk,
    ErrorCode,
    ErrorResponse,
    MessageSpec,
    Ping,
    Pong,
    ProtocolError,
    Reader,
    ReadRequest,
    Role,
    State,
    StatRequest,
    StatResponse,
    WireEvent,
    codec,
    encode,
    register,
)
from shoal.wire.events import Hello
from tests.wire.pair import SECRET, Pair, drain

DIGEST = "sha256:" + "ab" * 32


def opened(chunk: int = 0) -> Pair:
    pair = Pair(chunk=chunk)
    at_client, at_server = pair.handshake()
    assert at_client == [Authenticated("server-node")]
    assert at_server == [Authenticated("client-node")]
    return pair


def test_handshake_opens_both_sides() -> None:
    pair = opened()
    assert pair.client.state is State.OPEN and pair.server.state is State.OPEN
    assert "OPEN peer=server-node" in repr(pair.client)


def test_wrong_secret_is_refused_by_both_sides() -> None:
    pair = Pair(server_secret=b"another secret")
    pair.server.receive_data(pair.client.data_to_send())
    assert drain(pair.server) == []
    pair.client.receive_data(pair.server.data_to_send())
    with pytest.raises(AuthFailedError):
        drain(pair.client)
    assert pair.client.state is State.CLOSED
    pair.server.receive_data(pair.client.data_to_send())  # client's Hello-reply Auth
    with pytest.raises(AuthFailedError):
        drain(pair.server)


def test_reflected_auth_is_refused() -> None:
    """A peer that echoes our own Hello and Auth back must not get in."""
    victim = Connection(Role.SERVER, SECRET, node="v")
    hello = victim.data_to_send()
    attacker_nonce = b"\x01" * 32
    victim.receive_data(encode(Hello(attacker_nonce, "x")))
    drain(victim)
    victim_auth = victim.data_to_send()
    assert hello and victim_auth
    victim.receive_data(victim_auth)  # reflect it
    with pytest.raises(AuthFailedError):
        drain(victim)


def test_requests_before_auth_close_the_connection() -> None:
    server = Connection(Role.SERVER, SECRET)
    server.receive_data(encode(StatRequest(1, DIGEST)))
    with pytest.raises(ProtocolError, match="not allowed in state HELLO"):
        drain(server)
    client = Connection(Role.CLIENT, SECRET)
    with pytest.raises(ProtocolError):
        client.send(StatRequest(1, DIGEST))


EVENTS: list[WireEvent] = [
    StatRequest(7, DIGEST),
    StatResponse(7, 10 * 2**20, 4 * 2**20, False, b"\xa0", (b"\x11" * 32, b"", b"\x22" * 32)),
    StatResponse(8, 0, 1, True, b"", None),
    ReadRequest(9, DIGEST, 2**40, MAX_READ),
    CancelRead(9),
    ErrorResponse(9, ErrorCode.PIECE_MISSING, "piece 3 is not here ✓"),
    Ping(b"12345678"),
    Pong(b"87654321"),
]


@pytest.mark.parametrize("chunk", [0, 1, 5])
def test_every_message_roundtrips_in_any_split(chunk: int) -> None:
    pair = opened(chunk)
    assert pair.to_server(*EVENTS) == EVENTS
    assert pair.to_client(*EVENTS) == EVENTS


def test_data_body_as_chunks_and_in_place() -> None:
    pair = opened(chunk=3)
    body = bytes(range(256)) * 40
    wire = pair.server.send(Data(5, len(body))) + body + pair.server.send(Ping(b"pppppppp"))
    events = pair.feed(pair.client, wire)
    assert events[0] == Data(5, len(body))
    assert b"".join(e.data for e in events[1:-1] if isinstance(e, DataChunk)) == body
    assert events[-1] == Ping(b"pppppppp")

    # in place: the body goes into the caller's buffer, never through the connection
    client = opened().client
    client.receive_data(wire[: HEADER_SIZE + 100])
    assert client.next_event() == Data(5, len(body))
    dest = memoryview(bytearray(len(body)))
    got = client.read_body_into(dest)
    assert got == 100 and client.body_remaining == len(body) - 100
    dest[got:] = body[got:]  # as if readinto() had filled it from the socket
    client.body_received(len(body) - got)
    assert bytes(dest) == body and client.next_event() is NEED_DATA
    client.receive_data(wire[HEADER_SIZE + len(body) :])
    assert client.next_event() == Ping(b"pppppppp")
    with pytest.raises(ValueError, match="out of step"):
        client.body_received(1)


def _header(code: int, length: int, version: int = 1, magic: bytes = b"SH") -> bytes:
    return struct.pack("!2sBBII", magic, version, code, 1, length)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (_header(0x10, 1000), "exceeds"),
        (_header(0x13, MAX_READ + 1), "exceeds"),
        (_header(0x11, 2**32 - 1), "exceeds"),
        (_header(0x10, 0, magic=b"GE"), "magic"),
        (_header(0x10, 0, version=2), "version"),
        (_header(0x55, 0), "unknown message type"),
        (_header(0x01, 33) + b"\x00" * 33, "not allowed in state OPEN"),
        (_header(0x10, 3) + b"\x05ab", "truncated"),
        (_header(0x10, 4) + b"\x02abX", "trailing"),
        (_header(0x10, 3) + b"\x02\xff\xfe", "UTF-8"),
        (_header(0x7F, 4) + b"\x00\x63\x00\x00", "unknown code"),
        (_header(0x11, 15) + struct.pack("!QIB", 10, 4, 0) + b"\x01\x00", "spare bits"),
        (_header(0x11, 14) + struct.pack("!QIB", 10, 0, 0) + b"\x00", "piece size"),
        (_header(0x11, 13) + struct.pack("!QIB", 2**40, 16, 0), "pieces >"),
        (_header(0x12, 13) + struct.pack("!QI", 0, MAX_READ + 1) + b"\x00", "length"),
    ],
)
def test_malformed_frames_close_with_a_reason(raw: bytes, reason: str) -> None:
    conn = opened().client
    conn.receive_data(raw)
    with pytest.raises(ProtocolError, match=reason):
        drain(conn)
    assert conn.state is State.CLOSED and reason.split()[0] in conn.close_reason
    assert conn.next_event() is NEED_DATA  # stays closed


def test_oversized_frame_is_refused_before_its_payload_arrives() -> None:
    conn = opened().client
    conn.receive_data(_header(0x7F, 10 * 2**20))  # header alone, no payload yet
    with pytest.raises(ProtocolError, match="exceeds"):
        conn.next_event()


def test_truncated_input_waits_then_fails_at_eof() -> None:
    frame = encode(ReadRequest(3, DIGEST, 0, 10))
    for cut in range(1, len(frame)):
        conn = opened().server
        conn.receive_data(frame[:cut])
        assert conn.next_event() is NEED_DATA
        conn.receive_data(b"")
        with pytest.raises(ProtocolError, match="middle of a frame"):
            conn.next_event()
    clean = opened().server
    clean.receive_data(b"")
    assert clean.next_event() is NEED_DATA and clean.state is State.CLOSED


digests = st.text("0123456789abcdef", min_size=64, max_size=64).map(lambda h: "sha256:" + h)
ids = st.integers(0, 2**32 - 1)


@st.composite
def stat_responses(draw: st.DrawFn) -> StatResponse:
    piece = draw(st.integers(1, 64))
    size = draw(st.integers(0, 40 * piece))
    count = (size + piece - 1) // piece
    bits = [draw(st.booleans()) for _ in range(count)]
    field = bytearray((count + 7) // 8)
    for i, b in enumerate(bits):
        if b:
            field[i >> 3] |= 0x80 >> (i & 7)
    hashes = draw(
        st.none() | st.tuples(*[st.sampled_from([b"", b"\x07" * 32, b"\xee" * 32])] * count)
    )
    return StatResponse(draw(ids), size, piece, draw(st.booleans()), bytes(field), hashes)


events = st.one_of(
    st.builds(StatRequest, ids, digests),
    st.builds(ReadRequest, ids, digests, st.integers(0, 2**64 - 1), st.integers(0, MAX_READ)),
    st.builds(ErrorResponse, ids, st.sampled_from(ErrorCode), st.text(max_size=200)),
    st.builds(Ping, st.binary(min_size=8, max_size=8)),
    stat_responses(),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(events, max_size=8), st.integers(1, 64))
def test_generated_frames_roundtrip(sent: list[WireEvent], chunk: int) -> None:
    pair = opened(chunk)
    assert pair.to_server(*sent) == sent


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.integers(1, 32))
def test_garbage_only_ever_raises_protocol_error(garbage: bytes, chunk: int) -> None:
    pair = opened(chunk)
    try:
        for e in pair.feed(pair.server, garbage):
            assert isinstance(e, WireEvent)
    except ProtocolError:
        assert pair.server.state is State.CLOSED


@dataclass(frozen=True, slots=True)
class Announce(WireEvent):
    """The kind of message the swarm issue will add."""

    request_id: int
    digest: str
    piece: int


def _enc_announce(e: Announce) -> bytes:
    return struct.pack("!I", e.piece) + e.digest.encode()


def _dec_announce(request_id: int, buf: memoryview) -> Announce:
    r = Reader(buf, "announce")
    piece = r.uint("I")
    return Announce(request_id, piece=piece, digest=r.take(len(buf) - 4).decode())


def test_a_new_message_type_is_one_register_call() -> None:
    spec = register(MessageSpec(0x7E, Announce, 4 + 100, _enc_announce, _dec_announce))
    try:
        with pytest.raises(ValueError, match="already taken"):
            register(MessageSpec(0x7E, Announce, 1, _enc_announce, _dec_announce))
        pair = opened()
        assert pair.to_server(Announce(4, DIGEST, 17)) == [Announce(4, DIGEST, 17)]
    finally:
        del codec._BY_CODE[spec.code], codec._BY_CLASS[spec.cls]
