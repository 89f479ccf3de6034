"""Asyncio transport over ``shoal.wire``: peer server, peer client, throttle."""

from shoal.peer.client import Address, PeerClient, PeerConnection, parse_address
from shoal.peer.errors import PeerRequestError, PeerUnavailableError
from shoal.peer.server import PeerServer
from shoal.peer.throttle import Throttle, TokenBucket

__all__ = [
    "Address",
    "PeerClient",
    "PeerConnection",
    "PeerRequestError",
    "PeerServer",
    "PeerUnavailableError",
    "Throttle",
    "TokenBucket",
    "parse_address",
]
