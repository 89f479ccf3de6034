"""Two ``Connection`` objects joined by an in-memory link (h11's ``ConnectionPair``)."""

from __future__ import annotations

from shoal.wire import NEED_DATA, Connection, Role, WireEvent

SECRET = b"cluster secret for tests"


def drain(conn: Connection) -> list[WireEvent]:
    events: list[WireEvent] = []
    while True:
        event = conn.next_event()
        if event is NEED_DATA:
            return events
        assert isinstance(event, WireEvent)
        events.append(event)


class Pair:
    def __init__(
        self, client_secret: bytes = SECRET, server_secret: bytes = SECRET, chunk: int = 0
    ) -> None:
        self.client = Connection(Role.CLIENT, client_secret, node="client-node")
        self.server = Connection(Role.SERVER, server_secret, node="server-node")
        self.chunk = chunk

    def feed(self, dest: Connection, data: bytes) -> list[WireEvent]:
        """Deliver ``data`` to ``dest`` (in ``chunk``-sized pieces if set); its events."""
        events: list[WireEvent] = []
        step = self.chunk or max(len(data), 1)
        for i in range(0, len(data), step):
            dest.receive_data(data[i : i + step])
            events += drain(dest)
        return events

    def handshake(self) -> tuple[list[WireEvent], list[WireEvent]]:
        at_client: list[WireEvent] = []
        at_server: list[WireEvent] = []
        for _ in range(3):
            at_server += self.feed(self.server, self.client.data_to_send())
            at_client += self.feed(self.client, self.server.data_to_send())
        return at_client, at_server

    def to_server(self, *events: WireEvent) -> list[WireEvent]:
        return self.feed(self.server, b"".join(self.client.send(e) for e in events))

    def to_client(self, *events: WireEvent) -> list[WireEvent]:
        return self.feed(self.client, b"".join(self.server.send(e) for e in events))
