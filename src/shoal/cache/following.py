"""The store's side of readers that follow a download: events, staged pieces, buffers.

A runtime's stream and a peer's cut-through read both follow a blob while it arrives.
They wait on events (a piece present, a piece staged, a blob vouched for, complete or
created), never poll, and they read pieces from memory where the store holds them
(``hot.py``). ``PieceStore`` mixes this in; it is a module of its own to keep the store
readable, not a separate object.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractContextManager

from shoal.cache.blob import Blob
from shoal.cache.errors import PieceCorruptError, PieceMissingError
from shoal.cache.hot import HotPiece, HotPieces
from shoal.errors import BlobUnknownError


def streamable(hot: HotPiece, peer: str) -> bool:
    """The bytes in may be sent to ``peer``: stored, or staged verified from another."""
    return not hot.staged or (hot.verified and not (peer and hot.source == peer))


class Following:
    """Mixed into ``PieceStore``: the waits and the in-memory pieces."""

    _blobs: dict[str, Blob]
    #: blobs someone waits to see created: (event, [number of waiters])
    _blob_waiters: dict[str, tuple[asyncio.Event, list[int]]]
    hot: HotPieces

    def _get(self, digest: str) -> Blob:
        blob = self._blobs.get(digest)
        if blob is None:
            raise BlobUnknownError(f"{digest} not in the piece store")
        return blob

    async def wait_blob(self, digest: str) -> None:
        """Return once ``digest`` is in the store (``create``d); callers bound the wait."""
        if digest in self._blobs:
            return
        waiting = self._blob_waiters.setdefault(digest, (asyncio.Event(), [0]))
        waiting[1][0] += 1
        try:
            await waiting[0].wait()
        finally:
            waiting[1][0] -= 1
            if not waiting[1][0] and self._blob_waiters.get(digest) is waiting:
                del self._blob_waiters[digest]  # nobody waits any more: no leak

    async def wait_piece(self, digest: str, index: int) -> None:
        """Return once piece ``index`` is present.

        Raises ``BlobEvictedError`` if the blob goes, ``PieceMissingError`` if the
        downloader gives the piece up (``abandon_piece``). Callers bound the wait.
        """
        blob = self._get(digest)
        if blob.present[index]:
            return
        await blob.waiter(index)

    def abandon_piece(self, digest: str, index: int) -> None:
        """Nobody is fetching piece ``index`` now: whoever waits for it gets
        ``PieceMissingError`` (a peer queued on it for cut-through is told PIECE_MISSING)."""
        blob = self._blobs.get(digest)
        if blob is not None and not blob.present[index]:
            blob.fail_piece_waiters(
                index, PieceMissingError(f"{digest} piece {index} was abandoned")
            )

    def stage_piece(
        self,
        digest: str,
        index: int,
        data: memoryview,
        release: Callable[[], None],
        *,
        filled: int = 0,
        verified: bool = False,
        source: str = "",
    ) -> None:
        """Bytes of piece ``index`` readers may send before they are stored,
        ``data[:filled]`` in so far (``grow_piece`` as more arrive).

        An origin fetch stages for the runtime's stream only: its bytes are vouched for
        by the whole digest, not by a piece hash, and the stream holds the blob's tail
        back until that digest is checked (``wait_complete``), so staging changes
        nothing a client can take for whole; it lets the stream send as a relay would,
        while the piece is still arriving. Peers never see those: ``wait_piece`` and
        ``file_range`` want the piece present.

        A peer fetch stages ``verified``: every byte of ``data[:filled]`` matched the
        root's chunk hashes (``cache/chunks.py``), so the peer server may stream them to
        children waiting for the piece (``wait_streamable``) while the rest arrives; to
        any but ``source``, the peer they come from.

        The store calls ``release()`` once it no longer serves them; the caller keeps
        its own hold while it fills and writes the buffer (then ``write_piece`` without
        ``release``), and ``unstage_piece``s it if the fetch ends without the piece.
        """
        blob = self._get(digest)
        if len(data) != blob.piece_length(index):
            raise PieceCorruptError(f"{digest} piece {index}: {len(data)} bytes staged")
        self.hot.keep(
            (digest, index), data, release, filled=filled, staged=True, verified=verified,
            source=source,
        )  # fmt: skip
        if filled:
            blob.wake_readers(index)

    def unstage_piece(self, digest: str, index: int, data: memoryview) -> None:
        """The fetch that staged ``data`` ends without storing it (failed, cancelled, a
        chunk did not match): readers following it go on from whatever comes next."""
        entry = self.hot.peek((digest, index))
        if entry is not None and entry.staged and entry.view is data:
            self.hot.discard((digest, index), data)
            blob = self._blobs.get(digest)
            if blob is not None:
                blob.wake_readers(index)

    def grow_piece(self, digest: str, index: int, filled: int, data: memoryview) -> None:
        """More bytes of the piece staged as ``data`` are in. Only that buffer's entry
        grows: a second fetch of the same piece may have staged its own since, and its
        buffer holds only its own ``filled`` bytes."""
        self.hot.grow((digest, index), filled, data)
        blob = self._blobs.get(digest)
        if blob is not None:
            blob.wake_readers(index)

    async def wait_readable(self, digest: str, index: int) -> None:
        """Return once piece ``index`` is present or has staged bytes (``stage_piece``);
        raises as ``wait_piece`` does."""
        blob = self._get(digest)
        while not blob.present[index]:
            staged = self.hot.peek((digest, index))
            if staged is not None and staged.filled:
                return
            await blob.reader(index)

    async def wait_streamable(
        self, digest: str, index: int, after: int = 0, *, peer: str = ""
    ) -> None:
        """Return once piece ``index`` is present, or staged ``verified`` with more than
        ``after`` bytes in (what ``peer`` may be sent: not bytes that come from it);
        raises as ``wait_piece`` does."""
        blob = self._get(digest)
        while not blob.present[index]:
            staged = self.hot.peek((digest, index))
            if staged is not None and streamable(staged, peer) and staged.filled > after:
                return
            await blob.reader(index)

    def vouch(self, digest: str) -> None:
        """The caller checked the whole digest of every byte it staged and is writing:
        a stream may release a blob's tail now, before the last writes land (and before
        ``finish``). Only for the runtime's stream: everyone else waits for complete."""
        self._get(digest).vouch()

    async def wait_vouched(self, digest: str) -> None:
        """Until the blob is vouched for (``vouch``) or complete; raises
        ``BlobEvictedError`` if it goes first."""
        await self._get(digest).vouching()

    async def wait_complete(self, digest: str) -> None:
        """Return once the blob is complete (its whole digest checked); raises
        ``BlobEvictedError`` if it goes first (its download failed). Callers bound it."""
        await self._get(digest).completion()

    def piece_buffer(self, digest: str, index: int) -> AbstractContextManager[HotPiece | None]:
        """The piece's bytes in memory if the store holds them (a writer handed them
        over, or a fetch staged them: then perhaps not all in yet, see ``HotPiece``),
        pinned until the block ends; None otherwise."""
        return self.hot.pinned((digest, index))
