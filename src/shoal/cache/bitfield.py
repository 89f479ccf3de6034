"""Which pieces of a blob are present: one bit per piece, most significant bit first.

The byte layout is BitTorrent's (piece 0 is the high bit of byte 0, spare bits at the
end are zero) so that it goes on the wire as it is and anyone who has read BEP 3 reads
it right. The count of set bits is kept up to date so "is it complete" is O(1).
"""

from __future__ import annotations

from collections.abc import Iterator


class Bitfield:
    __slots__ = ("_bits", "_count", "size")

    def __init__(self, size: int) -> None:
        if size < 0:
            raise ValueError("bitfield size must not be negative")
        self.size = size
        self._bits = bytearray((size + 7) // 8)
        self._count = 0

    @classmethod
    def from_bytes(cls, size: int, data: bytes) -> Bitfield:
        """Parse ``data``; wrong length or set spare bits raise ``ValueError``."""
        field = cls(size)
        if len(data) != len(field._bits):
            raise ValueError(f"bitfield of {size} bits needs {len(field._bits)} bytes")
        spare = len(field._bits) * 8 - size
        if spare and data[-1] & ((1 << spare) - 1):
            raise ValueError("bitfield has spare bits set")
        field._bits[:] = data
        field._count = sum(b.bit_count() for b in data)
        return field

    def __getitem__(self, index: int) -> bool:
        self._check(index)
        return bool(self._bits[index >> 3] & (0x80 >> (index & 7)))

    def set(self, index: int) -> None:
        self._check(index)
        mask = 0x80 >> (index & 7)
        if not self._bits[index >> 3] & mask:
            self._bits[index >> 3] |= mask
            self._count += 1

    def clear(self, index: int) -> None:
        self._check(index)
        mask = 0x80 >> (index & 7)
        if self._bits[index >> 3] & mask:
            self._bits[index >> 3] &= ~mask & 0xFF
            self._count -= 1

    @property
    def count(self) -> int:
        return self._count

    def all(self) -> bool:
        return self._count == self.size

    def indices(self) -> Iterator[int]:
        """Set bits in ascending order."""
        for byte_index, byte in enumerate(self._bits):
            if byte:
                base = byte_index << 3
                for bit in range(8):
                    if byte & (0x80 >> bit):
                        yield base + bit

    def to_bytes(self) -> bytes:
        return bytes(self._bits)

    def copy(self) -> Bitfield:
        other = Bitfield(self.size)
        other._bits[:] = self._bits
        other._count = self._count
        return other

    def _check(self, index: int) -> None:
        if not 0 <= index < self.size:
            raise IndexError(f"piece {index} outside 0..{self.size - 1}")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Bitfield):
            return NotImplemented
        return self.size == other.size and self._bits == other._bits

    __hash__ = None  # type: ignore[assignment]

    def __len__(self) -> int:
        return self.size

    def __repr__(self) -> str:
        return f"<Bitfield {self._count}/{self.size}>"
