"""Free ports on loopback for processes the demo, benchmarks and tests start."""

from __future__ import annotations

import random
import socket
from pathlib import Path

#: the lowest port handed out; below it are well-known and commonly configured ports
LOWEST = 10000
#: ports this process handed out already: a port is free again once its first taker
#: closes the probe socket, so without this two nodes of one cluster can be given the
#: same port (it happened: "address already in use" at an agent's start)
_GIVEN: set[int] = set()
_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def ephemeral_range() -> tuple[int, int]:
    """The ports the kernel gives outgoing connections (and ``bind(0)``)."""
    try:
        low, high = (int(x) for x in _RANGE_FILE.read_text().split())
    except (OSError, ValueError):
        return 32768, 60999
    return low, high


def free_port(host: str = "127.0.0.1") -> int:
    """A port free right now, for a process to bind soon after.

    Taken below the ephemeral range: a port from ``bind(0)`` lies inside it, and in the
    moment before the process binds it, any outgoing connection on the machine may get
    it as its source port (it happened: an agent of a test cluster failed with "address
    already in use" while the others connected to their root). Outside the range only
    an explicit bind can take it.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    low, _ = ephemeral_range()
    for _ in range(200):
        port = random.randrange(LOWEST, low) if low > LOWEST + 1000 else 0
        if port in _GIVEN:
            continue
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            bound: int = sock.getsockname()[1]
        if bound not in _GIVEN:
            _GIVEN.add(bound)
            return bound
    raise OSError("no free port found on " + host)
