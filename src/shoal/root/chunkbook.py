"""The chunk hashes a root publishes beside its piece hashes (``cache/chunks.py``).

Kept in memory only, for the blobs swarms pull now: 32 bytes per 64 KiB (0.05 % of a
blob), bounded by ``limit`` bytes, oldest blob out first. A blob whose chunk hashes are
gone (the root restarted, or they aged out) is served as before: its pieces are checked
whole, passed on only once whole.
"""

from __future__ import annotations

from collections import OrderedDict

#: chunk hashes kept in all: those of 128 GiB of blobs
LIMIT = 64 << 20


class ChunkBook:
    def __init__(self, limit: int = LIMIT) -> None:
        self.limit = limit
        self.bytes = 0
        self._blobs: OrderedDict[str, dict[int, bytes]] = OrderedDict()

    def __repr__(self) -> str:
        return f"<ChunkBook [{len(self._blobs)} blobs, {self.bytes} / {self.limit} bytes]>"

    def add(self, blob: str, index: int, chunks: bytes) -> None:
        if not chunks:
            return
        pieces = self._blobs.setdefault(blob, {})
        self._blobs.move_to_end(blob)
        old = pieces.get(index)
        pieces[index] = chunks
        self.bytes += len(chunks) - (0 if old is None else len(old))
        while self.bytes > self.limit and len(self._blobs) > 1:
            _, gone = self._blobs.popitem(last=False)
            self.bytes -= sum(len(c) for c in gone.values())

    def get(self, blob: str, first: int, count: int) -> tuple[bytes, ...]:
        """Pieces ``first .. first+count-1``'s chunk hashes; ``b""`` where unknown, and
        ``()`` if none are known."""
        pieces = self._blobs.get(blob)
        if not pieces or count <= 0:
            return ()
        return tuple(pieces.get(i, b"") for i in range(first, first + count))

    def drop(self, blob: str) -> None:
        gone = self._blobs.pop(blob, None)
        if gone is not None:
            self.bytes -= sum(len(c) for c in gone.values())
