from __future__ import annotations

import socket

from shoal.lab.ports import LOWEST, ephemeral_range, free_port


def test_free_ports_are_bindable_and_outside_the_ephemeral_range() -> None:
    low, high = ephemeral_range()
    assert LOWEST < low <= high
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)  # never the same port twice
    for port in ports:
        assert LOWEST <= port < low  # no outgoing connection can be handed it meanwhile
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))
