"""The piece store on disk, its index, and byte-capacity eviction."""

from shoal.cache.bitfield import Bitfield
from shoal.cache.blob import BlobInfo, FileRange
from shoal.cache.buffers import BufferPool, aligned_buffer
from shoal.cache.errors import (
    BlobConflictError,
    BlobEvictedError,
    CacheFullError,
    DiskFullError,
    PieceCorruptError,
    PieceDroppedError,
    PieceMissingError,
    PieceReadError,
    PieceWriteError,
)
from shoal.cache.layout import (
    MAX_PIECE_SIZE,
    MAX_PIECES,
    check_digest,
    choose_piece_size,
    piece_count,
    piece_length,
)
from shoal.cache.store import PieceStore

__all__ = [
    "MAX_PIECES",
    "MAX_PIECE_SIZE",
    "Bitfield",
    "BlobConflictError",
    "BlobEvictedError",
    "BlobInfo",
    "BufferPool",
    "CacheFullError",
    "DiskFullError",
    "FileRange",
    "PieceCorruptError",
    "PieceDroppedError",
    "PieceMissingError",
    "PieceReadError",
    "PieceStore",
    "PieceWriteError",
    "aligned_buffer",
    "check_digest",
    "choose_piece_size",
    "piece_count",
    "piece_length",
]
