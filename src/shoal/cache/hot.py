"""What the store keeps hot after a piece lands: its buffer in memory, its pages in the cache.

A piece that just landed is about to be read: the runtime's stream follows the
download a piece behind, and children in the swarm ask for it within milliseconds
(cut-through). Reading it back from disk cost a fifth of the agent's CPU on the store
path (issue 13), so the newest pieces stay where they already are:

- ``HotPieces``: the verified buffer a writer handed over (``write_piece(release=)``)
  is kept, up to ``limit`` bytes, and served from memory; when it leaves the set (and
  nobody is sending from it), ``release()`` gives it back to its pool. A reader pins an
  entry for the time of its send, so a buffer is never recycled under a send.
- ``PageWindow`` (``aioEnable: 0``): the newest ``limit`` bytes written through the page
  cache stay cached; older ranges are written back and dropped so the kernel reuses
  their pages (see ``diskio.py`` for why fresh pages are so dear on this VM).

Both are plain bookkeeping run on the event loop; the page drops run on a disk thread.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

Key = tuple[str, int]


@dataclass(eq=False, slots=True)
class _Entry:
    view: memoryview
    release: Callable[[], None] | None
    readers: int = 0
    gone: bool = False  # out of the set; released when the last reader is done


class HotPieces:
    """Verified piece buffers kept for readers, oldest out first, ``limit`` bytes in all."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._entries: OrderedDict[Key, _Entry] = OrderedDict()
        self.bytes = 0
        self.served = 0

    def keep(self, key: Key, view: memoryview, release: Callable[[], None] | None) -> None:
        old = self._entries.pop(key, None)
        if old is not None:
            self._retire(old)
        if len(view) > self.limit:
            if release is not None:
                release()
            return
        self._entries[key] = _Entry(view, release)
        self.bytes += len(view)
        while self.bytes > self.limit:
            _, entry = self._entries.popitem(last=False)
            self._retire(entry)

    @contextmanager
    def pinned(self, key: Key) -> Iterator[memoryview | None]:
        """The piece's buffer, safe to send from until the block ends; None if not hot."""
        entry = self._entries.get(key)
        if entry is None:
            yield None
            return
        entry.readers += 1
        self.served += 1
        try:
            yield entry.view
        finally:
            entry.readers -= 1
            if entry.gone and not entry.readers and entry.release is not None:
                entry.release()

    def drop_blob(self, digest: str) -> None:
        for key in [k for k in self._entries if k[0] == digest]:
            self._retire(self._entries.pop(key))

    def clear(self) -> None:
        entries, self._entries = list(self._entries.values()), OrderedDict()
        for entry in entries:
            self._retire(entry)

    def _retire(self, entry: _Entry) -> None:
        self.bytes -= len(entry.view)
        entry.gone = True
        if not entry.readers and entry.release is not None:
            entry.release()

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"<HotPieces [{len(self._entries)} pieces, {self.bytes} / {self.limit} bytes]>"


@dataclass(frozen=True, slots=True)
class WrittenRange:
    #: ``fileno()`` of the blob's data file, or -1 once it is closed
    fd: Callable[[], int]
    offset: int
    length: int


class PageWindow:
    """The newest ``limit`` bytes written through the page cache; ``push`` returns the
    ranges that fell out of it (to write back and drop on a disk thread)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._ranges: deque[WrittenRange] = deque()
        self.bytes = 0
        self.dropped = 0

    def push(self, written: WrittenRange) -> list[WrittenRange]:
        self._ranges.append(written)
        self.bytes += written.length
        out: list[WrittenRange] = []
        while self.bytes > self.limit and len(self._ranges) > 1:
            old = self._ranges.popleft()
            self.bytes -= old.length
            self.dropped += old.length
            out.append(old)
        return out

    def __repr__(self) -> str:
        return f"<PageWindow [{len(self._ranges)} ranges, {self.bytes} / {self.limit} bytes]>"
