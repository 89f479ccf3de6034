"""Piece arithmetic and piece sets as Python ints.

A piece is named by ``(blob digest, index)``; its size is a per-blob parameter (1–8 MiB
in practice; the on-disk store chooses the default, so nothing here assumes one).

Sets of pieces are plain ``int`` bitmasks with bit *i* standing for piece *i*. That is
the representation the scheduler and picker compute with, because the operations they
need on every decision — "what does this parent have that I lack" (``a & ~b``), "how
many" (``int.bit_count``), "the first one" (``x & -x``) — are single C-level big-int
operations on 1,024-piece blobs, which is what lets the simulator run the same code for
10,000 nodes. On the wire pieces travel in BitTorrent's layout (piece 0 is the high bit
of byte 0); ``to_bitfield``/``from_bitfield`` convert at the boundary.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from shoal.swarm.errors import PieceIndexError

MIB = 1 << 20


def piece_count(size: int, piece_size: int) -> int:
    """Number of pieces of a blob of ``size`` bytes; an empty blob has none."""
    if piece_size <= 0:
        raise PieceIndexError(f"piece size must be positive, not {piece_size}")
    return (size + piece_size - 1) // piece_size


def piece_length(size: int, piece_size: int, index: int) -> int:
    """Bytes in piece ``index``; the last piece may be short."""
    count = piece_count(size, piece_size)
    if not 0 <= index < count:
        raise PieceIndexError(f"piece {index} outside 0..{count - 1}")
    return min(piece_size, size - index * piece_size)


def full_mask(count: int) -> int:
    return (1 << count) - 1


def mask_of(indices: Iterable[int]) -> int:
    mask = 0
    for i in indices:
        mask |= 1 << i
    return mask


def lowest(mask: int) -> int:
    """Index of the lowest set bit, or -1 for the empty set."""
    return (mask & -mask).bit_length() - 1


def indices_of(mask: int) -> Iterator[int]:
    while mask:
        low = mask & -mask
        yield low.bit_length() - 1
        mask ^= low


def to_bitfield(mask: int, count: int) -> bytes:
    """BitTorrent layout: piece 0 is the most significant bit of byte 0."""
    if mask >> count:
        raise PieceIndexError(f"piece set has bits beyond {count} pieces")
    nbytes = (count + 7) // 8
    if count == 0:
        return b""
    rev = int(format(mask, f"0{count}b")[::-1], 2)
    return (rev << (nbytes * 8 - count)).to_bytes(nbytes, "big")


def from_bitfield(data: bytes, count: int) -> int:
    nbytes = (count + 7) // 8
    if len(data) != nbytes:
        raise PieceIndexError(f"bitfield of {count} pieces needs {nbytes} bytes")
    if count == 0:
        return 0
    value = int.from_bytes(data, "big")
    spare = nbytes * 8 - count
    if value & ((1 << spare) - 1):
        raise PieceIndexError("bitfield has spare bits set")
    return int(format(value >> spare, f"0{count}b")[::-1], 2)
