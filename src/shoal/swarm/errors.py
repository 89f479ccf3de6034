"""What the swarm core raises: a message the shell got wrong, never a network fault.

Faults of peers (slow, dead, bad bytes) are inputs to the state machines, not
exceptions; these errors mean the caller broke the contract (a piece index outside the
blob, a message for a blob or peer it never joined) and point at a bug in the shell.
"""

from __future__ import annotations

from shoal.errors import ShoalError


class SwarmError(ShoalError):
    """Root of the swarm core's errors."""


class PieceIndexError(SwarmError):
    """A piece index or piece set does not fit the blob's piece count."""

    http_status = 400
    oci_code = "RANGE_INVALID"


class BlobNotJoinedError(SwarmError):
    """A message names a blob the scheduler has no swarm for."""

    http_status = 404
    oci_code = "BLOB_UNKNOWN"


class PeerNotJoinedError(SwarmError):
    """A message names a peer that is not (or no longer) in the blob's swarm."""

    http_status = 409
