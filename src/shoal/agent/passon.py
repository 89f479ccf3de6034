"""A piece passed on while it arrives: its chunk check and its staged, verified prefix.

One per piece fetch of a download (``DownloadDriver._fetch``). The peer client tells
the ``ChunkCheck`` of the bytes as they land; each chunk that matches the root's chunk
hashes (``cache/chunks.py``) grows the piece's staged copy in the store
(``stage_piece(verified=True)``), which the peer server streams to the children waiting
for the piece and the runtime's stream may send. Without chunk hashes (an older root,
or none kept for the blob) nothing is staged: the piece is checked whole and passed on
once stored, as before.

The buffer has two holders once staged: the fetch (until the piece is stored or the
fetch ends) and the store (while it serves the staged bytes); it goes back to the pool
when both let go, never while a reader may still send from it.
"""

from __future__ import annotations

from collections.abc import Callable

from shoal.cache import PieceStore
from shoal.cache.buffers import BufferPool
from shoal.cache.chunks import ChunkCheck
from shoal.errors import ShoalError


class PassOn:
    __slots__ = ("check", "holders", "index", "key", "parent", "pool", "staged", "store")

    def __init__(
        self, store: PieceStore, pool: BufferPool, key: str, index: int, parent: str = ""
    ) -> None:
        self.store = store
        self.parent = parent  # never streamed back to it (``stage_piece(source=)``)
        self.pool = pool
        self.key = key
        self.index = index
        self.check = ChunkCheck(self._verified)
        self.staged = False
        self.holders = 1  # the fetch's own

    def __repr__(self) -> str:
        staged = "staged" if self.staged else "not staged"
        return f"<PassOn {self.key[7:19]} piece {self.index} {self.check!r} {staged}>"

    @property
    def verified(self) -> bool:
        """Every byte matched its chunk hash: the piece needs no hashing again."""
        return self.staged and self.check.complete

    def know(self, chunks: bytes | None) -> None:
        if chunks:
            self.check.know(chunks)

    def _verified(self, upto: int) -> None:
        buffer = self.check.buffer
        if buffer is None:
            return
        if upto < 0:  # a chunk did not match: what follows it is never passed on
            self.unstage()
            return
        if self.staged:
            self.store.grow_piece(self.key, self.index, upto, buffer)
            return
        try:
            self.store.stage_piece(
                self.key, self.index, buffer, self._drop, filled=upto, verified=True,
                source=self.parent,
            )  # fmt: skip
        except ShoalError:
            return  # the blob left the store: the fetch's end says so
        self.staged = True
        self.holders += 1

    def unstage(self) -> None:
        buffer = self.check.buffer
        if self.staged and buffer is not None:
            self.store.unstage_piece(self.key, self.index, buffer)

    def abandon(self) -> None:
        """The fetch ends without storing the piece (failed, cancelled, not wanted): its
        staged copy leaves the store and the fetch lets go. Once per fetch, by whoever
        holds it last (the fetch task, or the one that takes its received bytes)."""
        self.unstage()
        self.let_go()

    def let_go(self) -> None:
        """The fetch is done with the buffer (the piece is stored, or it never will be:
        then ``unstage`` first)."""
        self._drop()

    def _drop(self) -> None:
        self.holders -= 1
        buffer = self.check.buffer
        if self.holders == 0 and buffer is not None and isinstance(buffer.obj, bytearray):
            self.pool.give(buffer.obj)


async def store_piece(
    store: PieceStore,
    key: str,
    index: int,
    data: memoryview,
    sha256: bytes,
    po: PassOn | None,
    releaser: Callable[[memoryview], Callable[[], None] | None],
) -> None:
    """Write a fetched piece, checked against the root's ``sha256``.

    Passed on as it came (staged): the store already holds the buffer for the readers
    of the staged bytes and takes the fetch's hold too (``release=po.let_go``), and a
    piece whose every chunk matched is not hashed again.
    Otherwise the store takes the buffer (``releaser(data)``): it serves readers from it
    while it is hot and gives it back to the pool itself, whatever happens.
    """
    if po is None or not po.staged:
        await store.write_piece(key, index, data, expect=sha256, release=releaser(data))
        return
    try:
        vouched = sha256 if po.verified else None
        # the fetch's hold goes to the store: let go once no disk thread reads the
        # buffer (a write cancelled mid-way, as the download ends, releases it only when
        # the thread is done; the pool must not hand it on while it is being written)
        await store.write_piece(key, index, data, sha256=vouched, expect=sha256, release=po.let_go)
    except BaseException:
        po.unstage()
        raise
