"""Piece buffers: page-aligned, reused, so that no byte lands in fresh memory.

Two costs this module exists to avoid, both measured on the 2-core test VM:

- **Fresh memory.** A new ``bytearray`` per piece makes the allocator map new zeroed
  pages, and the first write into each one faults (about 1.4 ns per byte here, where the
  guest hands free pages back to the host): in the 16-node bench a tenth of an agent's
  main-thread time. A downloader takes a buffer for a read and gives it back once the
  piece is stored (or the store gives it back when it no longer serves it from memory).
- **Copies for ``O_DIRECT``.** Direct writes need page-aligned memory; a ``bytearray``
  from the allocator never is (its data starts 16 bytes into a page), so every piece
  used to be copied into an aligned scratch buffer first. ``view(size)`` returns an
  aligned window of a slightly larger pooled ``bytearray``; ``view.obj`` is that
  ``bytearray``, which is what ``give`` takes back.
"""

from __future__ import annotations

import ctypes
import logging
import mmap

log = logging.getLogger(__name__)

#: alignment of direct I/O buffers (a page; covers every logical block size seen)
ALIGN = 4096


def address_of(buffer: bytearray | memoryview) -> int:
    """Where a writable buffer's bytes start in memory."""
    return ctypes.addressof(ctypes.c_char.from_buffer(buffer))


def is_aligned(view: memoryview) -> bool:
    return not view.readonly and address_of(view) % ALIGN == 0


def aligned_buffer(size: int) -> memoryview:
    """A page-aligned, writable buffer (private anonymous mmap) that direct writes use as
    is. Private: ``mmap(-1, n)`` alone is a *shared* mapping, shmem pages that measured
    2.5 times the first-touch cost of ordinary memory here."""
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
    return memoryview(mmap.mmap(-1, max(size, 1), flags=flags))[:size]


class BufferPool:
    """Idle buffers kept by size for reuse, up to ``keep_bytes`` in all."""

    def __init__(self, keep_bytes: int = 64 << 20) -> None:
        #: idle buffers are kept up to this many bytes in all (a download keeps a dozen
        #: requests in flight per blob, and several blobs download at once)
        self.keep_bytes = keep_bytes
        self._idle: dict[int, list[bytearray]] = {}
        self._idle_bytes = 0
        #: ids of the idle buffers: a buffer given back twice must not be handed out twice
        self._idle_ids: set[int] = set()
        self.allocated = 0
        self.double_gives = 0

    def take(self, size: int) -> bytearray:
        """A buffer of exactly ``size`` bytes (not aligned); ``give`` it back."""
        idle = self._idle.get(size)
        if idle:
            self._idle_bytes -= size
            buffer = idle.pop()
            self._idle_ids.discard(id(buffer))
            return buffer
        self.allocated += 1
        return bytearray(size)

    def view(self, size: int) -> memoryview:
        """``size`` page-aligned bytes of a pooled buffer; give back ``view.obj``."""
        backing = self.take(size + ALIGN)
        skip = -address_of(backing) % ALIGN
        return memoryview(backing)[skip : skip + size]

    def give(self, buffer: bytearray) -> None:
        if id(buffer) in self._idle_ids:
            # a holder's bug, not the pool's to hide: two later takers would share it
            self.double_gives += 1
            log.error(
                "a buffer of %d bytes was given back twice: kept once", len(buffer), stack_info=True
            )
            return
        if self._idle_bytes + len(buffer) <= self.keep_bytes:
            self._idle.setdefault(len(buffer), []).append(buffer)
            self._idle_ids.add(id(buffer))
            self._idle_bytes += len(buffer)

    def __repr__(self) -> str:
        idle = sum(len(v) for v in self._idle.values())
        return f"<BufferPool [{idle} idle, {self._idle_bytes} bytes | {self.allocated} allocated]>"
