"""What the store keeps hot after a piece lands: its buffer in memory, its pages in the cache.

A piece that just landed is about to be read: the runtime's stream follows the
download a piece behind, and children in the swarm ask for it within milliseconds
(cut-through). Reading it back from disk cost a fifth of the agent's CPU on the store
path (issue 13), so the newest pieces stay where they already are:

- ``HotPieces``: the verified buffer a writer handed over (``write_piece(release=)``)
  is kept, up to ``limit`` bytes, and served from memory; when it leaves the set (and
  nobody is sending from it), ``release()`` gives it back to its pool. A reader pins an
  entry for the time of its send, so a buffer is never recycled under a send. An
  origin fetch *stages* each piece as its bytes arrive (``PieceStore.stage_piece``):
  the runtime's stream sends them while the piece is still filling, as a relay would.
- ``PageWindow``: the newest ``limit`` bytes written (or read back and checked) stay
  cached and *fresh*; older ranges are written back and dropped so the kernel reuses
  their pages (see ``diskio.py`` for why fresh pages are so dear on this VM), and are
  checked again on their next read (``integrity.py``).

Both are plain bookkeeping run on the event loop; the page drops run on a disk thread.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

Key = tuple[str, int]


@dataclass(eq=False, slots=True)
class HotPiece:
    """One piece's bytes in memory: ``view[:filled]`` are in (a staged piece grows)."""

    view: memoryview
    release: Callable[[], None] | None
    filled: int
    #: staged by a fetch that still owns (and fills) it; not counted against the limit
    staged: bool
    #: staged by a peer fetch that checks it chunk by chunk: ``view[:filled]`` is
    #: verified, peers may be sent it (an origin fetch's staged bytes are not)
    verified: bool = False
    #: the peer a verified staged piece comes from: never streamed back to it (two
    #: agents would each wait for the other's bytes)
    source: str = ""
    readers: int = 0
    gone: bool = False  # out of the set; released when the last reader is done
    waiters: list[asyncio.Future[None]] = field(default_factory=list)

    async def more(self, than: int) -> bool:
        """Until more than ``than`` bytes are in; False if the piece left the set first
        (its remaining bytes are then to be had from the store once the piece is present)."""
        while self.filled <= than and not self.gone:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self.waiters.append(fut)
            await fut
        return self.filled > than

    def _wake(self) -> None:
        waiters, self.waiters = self.waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)


class HotPieces:
    """Piece buffers kept for readers. Staged ones (a fetch's, still being filled and
    written) stay until their fetch settles or discards them; settled ones go oldest
    first beyond ``limit`` bytes."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._entries: OrderedDict[Key, HotPiece] = OrderedDict()
        self.bytes = 0  # settled bytes, held against ``limit``
        self.served = 0

    def keep(
        self,
        key: Key,
        view: memoryview,
        release: Callable[[], None] | None,
        *,
        filled: int | None = None,
        staged: bool = False,
        verified: bool = False,
        source: str = "",
    ) -> None:
        old = self._entries.pop(key, None)
        if old is not None:
            self._retire(old)
        filled = len(view) if filled is None else filled
        entry = HotPiece(view, release, filled, staged, verified, source)
        self._entries[key] = entry
        if not staged:
            self._count(entry)

    def grow(self, key: Key, filled: int, view: memoryview) -> None:
        """``view[:filled]`` are in, if ``view`` is the buffer staged for ``key``."""
        entry = self._entries.get(key)
        if entry is not None and entry.view is view and filled > entry.filled:
            entry.filled = filled
            entry._wake()

    def settle(self, key: Key) -> None:
        """A staged piece is written: it stays as an ordinary hot piece."""
        entry = self._entries.get(key)
        if entry is not None and entry.staged:
            entry.staged = False
            self._entries.move_to_end(key)
            self._count(entry)

    def _count(self, entry: HotPiece) -> None:
        self.bytes += len(entry.view)
        while self.bytes > self.limit:
            victim = next((k for k, e in self._entries.items() if not e.staged), None)
            if victim is None:
                break
            self._retire(self._entries.pop(victim))

    @contextmanager
    def pinned(self, key: Key) -> Iterator[HotPiece | None]:
        """The piece, safe to send from until the block ends; None if not hot."""
        entry = self._entries.get(key)
        if entry is None:
            yield None
            return
        entry.readers += 1
        self.served += 1
        try:
            yield entry
        finally:
            entry.readers -= 1
            if entry.gone and not entry.readers and entry.release is not None:
                entry.release()

    def peek(self, key: Key) -> HotPiece | None:
        return self._entries.get(key)

    def discard(self, key: Key, view: memoryview | None = None) -> None:
        """The piece leaves memory; with ``view``, only if it is that buffer's entry (a
        second fetch of the same piece may have staged its own since)."""
        entry = self._entries.get(key)
        if entry is not None and (view is None or entry.view is view):
            del self._entries[key]
            self._retire(entry)

    def __contains__(self, key: Key) -> bool:
        return key in self._entries

    def drop_blob(self, digest: str) -> None:
        for key in [k for k in self._entries if k[0] == digest]:
            self._retire(self._entries.pop(key))

    def clear(self) -> None:
        entries, self._entries = list(self._entries.values()), OrderedDict()
        for entry in entries:
            self._retire(entry)

    def _retire(self, entry: HotPiece) -> None:
        if not entry.staged:
            self.bytes -= len(entry.view)
        entry.gone = True
        entry._wake()
        if not entry.readers and entry.release is not None:
            entry.release()

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        staged = sum(1 for e in self._entries.values() if e.staged)
        return (
            f"<HotPieces [{len(self._entries)} pieces ({staged} staged), "
            f"{self.bytes} / {self.limit} bytes]>"
        )


@dataclass(frozen=True, slots=True)
class WrittenRange:
    #: ``fileno()`` of the blob's data file, or -1 once it is closed
    fd: Callable[[], int]
    offset: int
    length: int
    #: the piece it holds, and which of its turns in the window this is
    #: (``integrity.py``: a piece checked again since is still fresh)
    digest: str = ""
    index: int = 0
    stamp: int = 0


class PageWindow:
    """The newest ``limit`` bytes written through the page cache; ``push`` returns the
    ranges that fell out of it (to write back and drop on a disk thread)."""

    #: ranges kept whatever their size: the piece being streamed and the one after it
    keep_at_least = 2

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._ranges: deque[WrittenRange] = deque()
        self.bytes = 0
        self.dropped = 0

    def push(self, written: WrittenRange) -> list[WrittenRange]:
        self._ranges.append(written)
        self.bytes += written.length
        out: list[WrittenRange] = []
        while self.bytes > self.limit and len(self._ranges) > self.keep_at_least:
            old = self._ranges.popleft()
            self.bytes -= old.length
            self.dropped += old.length
            out.append(old)
        return out

    def __repr__(self) -> str:
        return f"<PageWindow [{len(self._ranges)} ranges, {self.bytes} / {self.limit} bytes]>"
