"""A message type added the way the swarm will add its own: register, handle, call."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from shoal.cache import PieceStore
from shoal.errors import ShoalError
from shoal.peer import PeerClient, PeerRequestError, PeerServer
from shoal.wire import ErrorCode, MessageSpec, Reader, WireEvent, codec, register
from tests.peer.conftest import SECRET


@dataclass(frozen=True, slots=True)
class Ask(WireEvent):
    request_id: int
    n: int


@dataclass(frozen=True, slots=True)
class Answer(WireEvent):
    request_id: int
    n: int


@dataclass(frozen=True, slots=True)
class Announce(WireEvent):
    text: str


def _enc_n(e: Ask | Answer) -> bytes:
    return struct.pack("!I", e.n)


def _dec_ask(request_id: int, buf: memoryview) -> Ask:
    r = Reader(buf, "ask")
    out = Ask(request_id, r.uint("I"))
    r.end()
    return out


def _dec_answer(request_id: int, buf: memoryview) -> Answer:
    r = Reader(buf, "answer")
    out = Answer(request_id, r.uint("I"))
    r.end()
    return out


def _enc_text(e: Announce) -> bytes:
    return e.text.encode()


def _dec_text(_: int, buf: memoryview) -> Announce:
    return Announce(bytes(buf).decode())


@pytest.fixture
def registered() -> Iterator[None]:
    specs = [
        register(MessageSpec(0x7B, Ask, 4, _enc_n, _dec_ask)),
        register(MessageSpec(0x7C, Answer, 4, _enc_n, _dec_answer, response=True)),
        register(MessageSpec(0x7D, Announce, 200, _enc_text, _dec_text)),
    ]
    try:
        yield
    finally:
        for spec in specs:
            del codec._BY_CODE[spec.code], codec._BY_CLASS[spec.cls]


async def test_request_answer_and_one_way_messages(registered: None, store: PieceStore) -> None:
    heard: list[tuple[str, WireEvent]] = []
    pushed: list[WireEvent] = []
    got_push = asyncio.Event()

    async def on_ask(event: WireEvent, peer_node: str) -> WireEvent | None:
        assert isinstance(event, Ask)
        if event.n == 13:
            raise ShoalError("unlucky")
        return Answer(event.request_id, event.n * 2)

    async def on_announce(event: WireEvent, peer_node: str) -> WireEvent | None:
        heard.append((peer_node, event))
        return None

    def on_message(_: object, event: WireEvent) -> None:
        pushed.append(event)
        got_push.set()

    handlers = {Ask: on_ask, Announce: on_announce}
    async with (
        PeerServer(store, SECRET, host="127.0.0.1", handlers=handlers) as server,
        PeerClient(SECRET, node="agent-7", on_message=on_message) as client,
    ):
        peer = ("127.0.0.1", server.port)
        answers = await asyncio.gather(*(client.call(peer, Ask(0, n)) for n in range(5)))
        assert all(isinstance(a, Answer) for a in answers)
        assert [a.n for a in answers if isinstance(a, Answer)] == [0, 2, 4, 6, 8]
        assert len({a.request_id for a in answers if isinstance(a, Answer)}) == 5
        with pytest.raises(PeerRequestError) as unlucky:
            await client.call(peer, Ask(0, 13))
        assert unlucky.value.code is ErrorCode.INTERNAL
        await client.notify(peer, Announce("have 3 pieces"))
        for _ in range(100):
            if heard:
                break
            await asyncio.sleep(0.01)
        assert heard == [("agent-7", Announce("have 3 pieces"))]
        # the server side pushes a one-way message down the same connection
        assert not await server.push("nobody", Announce("x"))
        assert await server.push("agent-7", Announce("schedule: ask 10.0.0.2"))
        await asyncio.wait_for(got_push.wait(), 5)
        assert pushed == [Announce("schedule: ask 10.0.0.2")]


async def test_unhandled_message_type_closes_the_connection(
    registered: None, store: PieceStore
) -> None:
    async with PeerServer(store, SECRET, host="127.0.0.1") as server, PeerClient(SECRET) as client:
        peer = ("127.0.0.1", server.port)
        with pytest.raises(ShoalError, match="closed"):
            await client.call(peer, Ask(0, 1))


@pytest.mark.parametrize("name", ["reno", "cubic"])
async def test_the_server_uses_the_configured_congestion_control(
    store: PieceStore, name: str
) -> None:
    """P2PConfig.congestion: the uploads' TCP congestion control, whatever the system's."""
    async with PeerServer(store, SECRET, host="127.0.0.1", congestion=name) as server:
        _, writer = await asyncio.open_connection("127.0.0.1", server.port)
        await asyncio.sleep(0.1)  # the server has accepted it
        conns = [c for c in server._connections if c.transport is not None]
        used = {
            c.transport.get_extra_info("socket")
            .getsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, 16)
            .rstrip(b"\0")
            .decode()
            for c in conns
            if c.transport is not None
        }
        writer.close()
        assert used == {name}
