"""Blob geometry: how a blob is cut into pieces, and the digest form the store accepts.

The default piece size is 4 MiB, chosen by measurement (``bench/peer_throughput.py
--piece-size``, 1 GiB, figures in ``docs/peer.md``). Throughput on the shared 2-core
test machine was too noisy to rank the sizes, so the receiver's CPU per GiB decided:
1 MiB pieces cost 2.0 s, 4 MiB 1.4 s, 8 MiB 1.2 s (per-piece overhead: a request, two
thread hops, a journal record). 8 MiB saves little more, while a swarm has half as many
units to spread and a streaming reader waits twice as long for its first piece. Large
blobs get larger pieces so that no blob has more than ``MAX_PIECES`` (which bounds the
stat frame's bitfield and hash list).
"""

from __future__ import annotations

import re

from shoal.errors import DigestInvalidError

MiB = 1 << 20
MIN_PIECE_SIZE = 16 * 1024
MAX_PIECE_SIZE = 16 * MiB
#: the automatic choice: pieces of at least this size, at most TARGET_PIECES of them
#: (512 KiB: see ``choose_piece_size`` for the runs that chose it over 1 MiB and 256 KiB)
AUTO_MIN_PIECE = 512 * 1024
TARGET_PIECES = 64
MAX_PIECES = 1 << 16
HASH_SIZE = 32

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


def check_digest(digest: str) -> str:
    """Return ``digest`` if it is ``sha256:<64 lowercase hex>``, else raise."""
    if not _DIGEST.fullmatch(digest):
        raise DigestInvalidError(f"not a sha256 digest: {digest[:80]!r}")
    return digest


def choose_piece_size(size: int, configured: int = 0) -> int:
    """``configured`` if set (doubled until the blob fits MAX_PIECES), else by size: the
    smallest power of two that cuts the blob into at most ``TARGET_PIECES`` pieces,
    between ``AUTO_MIN_PIECE`` and ``MAX_PIECE_SIZE``.

    Why by size: a swarm pipelines a blob piece by piece down trees several hops deep,
    and each hop costs a piece's transfer time, so a small layer in big pieces pays
    the hops in whole seconds (the 16-node bench, 16 MiB layers: p95 20.1 s in 4 MiB
    pieces, 10.3 s in 1 MiB, 10.35 s in 512 KiB); a big blob in small pieces pays the
    per-piece cost (requests, reports, hashing hops) tens of thousands of times.

    The floor, 512 KiB, from ``shoal bench`` on one 2-core machine, 2026-12-02, 4 x 16 MiB
    (p95 s, 1 MiB / 512 KiB / 256 KiB): 16 nodes at 25 Mbit/s, 5-50 ms queues,
    31.4-34.4 / 28.9-29.3 / 27.3-27.8; 32 nodes at 25 Mbit/s 35.0-39.2 / 33.1-34.0 /
    34.2-47.0; 16 nodes at 100 Mbit/s 9.15-9.27 / 9.09-9.41; 32 nodes at 100 Mbit/s
    21.8-24.7 / 22.2-23.2 / 53.0-55.9. Half-size pieces shorten every hop on slow links
    and cost nothing measurable at 100 Mbit/s; quarter-size ones cost the CPU that 32
    nodes on two cores do not have.
    """
    if configured:
        piece = configured
    else:
        piece = AUTO_MIN_PIECE
        while piece < MAX_PIECE_SIZE and piece_count(size, piece) > TARGET_PIECES:
            piece *= 2
    while piece < MAX_PIECE_SIZE and piece_count(size, piece) > MAX_PIECES:
        piece *= 2
    check_geometry(size, piece)
    return piece


def check_geometry(size: int, piece_size: int) -> None:
    if size < 0:
        raise ValueError("blob size must not be negative")
    if not MIN_PIECE_SIZE <= piece_size <= MAX_PIECE_SIZE:
        raise ValueError(f"piece size {piece_size} outside {MIN_PIECE_SIZE}..{MAX_PIECE_SIZE}")
    if piece_count(size, piece_size) > MAX_PIECES:
        raise ValueError(f"blob of {size} bytes needs more than {MAX_PIECES} pieces")


def piece_count(size: int, piece_size: int) -> int:
    return (size + piece_size - 1) // piece_size


def piece_length(size: int, piece_size: int, index: int) -> int:
    """Bytes in piece ``index``: ``piece_size`` except (perhaps) the last."""
    return min(piece_size, size - index * piece_size)


def pieces_of_range(piece_size: int, offset: int, length: int) -> range:
    """Indices of the pieces that hold bytes ``offset .. offset+length-1``."""
    if length <= 0:
        return range(0)
    return range(offset // piece_size, (offset + length - 1) // piece_size + 1)
