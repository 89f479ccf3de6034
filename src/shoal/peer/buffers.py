"""Piece buffers kept for reuse by a downloader.

A fresh ``bytearray`` for every piece costs more than it looks: the allocator maps new
zeroed pages and the first write into each one faults (256 faults per MiB). In the
16-node bench that was a tenth of an agent's main-thread time. A downloader takes a
buffer for a read and gives it back once the piece is stored; a buffer whose read was
cancelled while a worker thread may still hash or write it is simply not given back.
"""

from __future__ import annotations


class BufferPool:
    def __init__(self, keep_bytes: int = 64 << 20) -> None:
        #: idle buffers are kept up to this many bytes in all (a download keeps a dozen
        #: requests in flight per blob, and several blobs download at once)
        self.keep_bytes = keep_bytes
        self._idle: dict[int, list[bytearray]] = {}
        self._idle_bytes = 0
        self.allocated = 0

    def take(self, size: int) -> bytearray:
        idle = self._idle.get(size)
        if idle:
            self._idle_bytes -= size
            return idle.pop()
        self.allocated += 1
        return bytearray(size)

    def give(self, buffer: bytearray) -> None:
        if self._idle_bytes + len(buffer) <= self.keep_bytes:
            self._idle.setdefault(len(buffer), []).append(buffer)
            self._idle_bytes += len(buffer)

    def __repr__(self) -> str:
        idle = sum(len(v) for v in self._idle.values())
        return f"<BufferPool [{idle} idle | {self.allocated} allocated]>"
