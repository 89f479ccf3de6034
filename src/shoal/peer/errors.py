"""What a caller of the peer client must tell apart: a peer that is gone, and a peer that
answered "no". Either way the caller asks someone else; only a bad piece
(``shoal.cache.PieceCorruptError``) or a failed handshake (``shoal.wire.AuthFailedError``)
should get the peer banned.
"""

from __future__ import annotations

from shoal.errors import ShoalError
from shoal.wire import ErrorCode


class PeerUnavailableError(ShoalError):
    """The peer could not be reached, closed the connection, or did not answer in time."""

    http_status = 502
    oci_code = "UNAVAILABLE"


class PeerRequestError(ShoalError):
    """The peer answered the request with an error frame."""

    http_status = 502

    def __init__(self, message: str, *, code: ErrorCode) -> None:
        super().__init__(message, detail=code)
        self.code = code
