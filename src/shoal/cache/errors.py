"""What can go wrong with one piece or one blob in the store.

Every failure is scoped to the piece or blob it concerns: a full disk or an I/O error
fails that write or read and leaves the store (and the agent) running, so the caller can
fetch the piece again, serve it from elsewhere, or report the error for one request.
"""

from __future__ import annotations

from shoal.errors import BlobUnknownError, DigestMismatchError, ShoalError


class PieceMissingError(ShoalError):
    """The piece (or a piece under the byte range) is not present and verified here."""

    http_status = 404
    oci_code = "BLOB_UNKNOWN"


class PieceDroppedError(PieceMissingError):
    """A stored piece failed its check on read (its bytes on disk changed, or could not be
    read) and was dropped from the store: it must be fetched again."""


class PieceCorruptError(DigestMismatchError):
    """Bytes offered for a piece do not hash to the piece's known sha256."""


class BlobEvictedError(BlobUnknownError):
    """The blob was evicted or removed while someone was waiting for one of its pieces."""


class BlobConflictError(ShoalError):
    """A blob is being created again with a different size, piece size or piece hashes."""

    http_status = 409


class CacheFullError(ShoalError):
    """No room for the piece within ``capacity`` even after evicting every idle blob."""

    http_status = 507


class PieceWriteError(ShoalError):
    """Writing the piece to disk failed; the piece stays absent."""

    http_status = 507


class DiskFullError(PieceWriteError):
    """The file system ran out of space (ENOSPC/EDQUOT) while writing the piece."""


class PieceReadError(ShoalError):
    """Reading the piece from disk failed."""
