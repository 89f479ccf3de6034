"""Every byte a reader gets from the store is checked: what "fresh" means, and the check.

Issue 18: bytes of a stored blob flipped on disk under a running agent were served
whole, because a piece verified once (on its way in) stayed trusted for the life of
the process, and ``sendfile`` sends what the file holds without Python seeing it. The
rule now:

- **A piece is sent only from where its bytes are known good** (``Blob.fresh``):
  from the buffer it arrived in and was hashed in (``hot.py``, process memory), or from
  the page cache while it is *fresh*: written by this process, or read back and hashed,
  within the newest ``PAGE_WINDOW`` bytes of store traffic (``PageWindow``). When a
  piece falls out of that window its pages are dropped from the page cache and it stops
  being fresh: its next read comes from the device, so it is read into memory on a disk
  thread and hashed against its piece hash first (``_ensure_verified``); the pages that
  read brings into the page cache are what ``sendfile`` then sends, and the piece is
  fresh again for a while. So the check costs one sha256 over a piece each time it
  comes back from disk, not one per send: the runtime's stream and the children that
  ask for a piece within moments of each other share it, and a stream that follows a
  download (the common case) sends pieces that never left the window.
- **The data file is watched** (``_check_file``, one ``fstat`` per read): a file deleted
  (no links left), truncated or grown is a blob lost, removed from the store, so the
  next fetch writes it anew; a file written by someone else (its mtime moved while no
  write of ours was under way) makes every piece of the blob stale, so each is hashed
  before it is sent again.
- **A piece that fails its check is dropped** (journal ``DROP``), the blob is no longer
  complete, drop listeners are told (``add_drop_listener``: a downloader fetches it
  again) and the reader gets ``PieceDroppedError`` (a ``PieceMissingError``): peers are
  answered ``PIECE_MISSING``, the mirror's stream asks its provider for the blob again
  and goes on once the piece is back.
- **Pieces without a hash of their own** (an agent's own origin fetch, vouched for by
  the whole digest only) get one the first time one of them is read stale: the whole
  blob is hashed once, against its digest and piece by piece, and the piece hashes are
  journalled, so every later check is per piece. Such a piece of a blob still being
  fetched waits for the fetch to finish first (only the whole digest can vouch for it).

What is not covered: a page the kernel itself evicts inside the window (under memory
pressure) and reads back rotten from the device, and pages dropped while a send of
them is under way (milliseconds). Both need the device to rot the very blocks it wrote
seconds before.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
from collections.abc import Callable, Iterable
from typing import NoReturn

from shoal.cache import diskio
from shoal.cache import journal as jr
from shoal.cache.blob import Blob
from shoal.cache.disk import DiskThreads
from shoal.cache.errors import (
    BlobEvictedError,
    PieceDroppedError,
    PieceMissingError,
)
from shoal.cache.hot import HotPieces, PageWindow, WrittenRange
from shoal.cache.layout import HASH_SIZE

log = logging.getLogger(__name__)

#: ``listener(digest, index)`` when a piece failed its check on read and was dropped
DropListener = Callable[[str, int], None]


class Integrity:
    """Mixed into ``PieceStore``: freshness, the check on read, the data-file watch."""

    _blobs: dict[str, Blob]
    hot: HotPieces
    window: PageWindow
    disk: DiskThreads
    _used: int
    _stamp: int
    _drop_listeners: list[DropListener]

    def _drop(self, blob: Blob, reason: BlobEvictedError) -> None:  # PieceStore's
        raise NotImplementedError

    def add_drop_listener(self, listener: DropListener) -> None:
        """``listener(digest, index)`` when a stored piece failed its check on read and
        was dropped: whoever downloads the blob should fetch that piece again."""
        self._drop_listeners.append(listener)

    # -- freshness ---------------------------------------------------------------------

    def _fresh(self, blob: Blob, index: int) -> None:
        """The piece's bytes are known good in the page cache (just written or checked):
        trusted until ``PAGE_WINDOW`` newer bytes went through; then its pages are
        dropped and it is checked again on its next read."""
        self._stamp += 1
        stamp = self._stamp
        blob.fresh[index] = stamp
        written = WrittenRange(
            blob.open_fileno, blob.offset(index), blob.piece_length(index), blob.digest, index,
            stamp,
        )  # fmt: skip
        for old in self.window.push(written):
            self._stale(old)

    def _stale(self, old: WrittenRange) -> None:
        blob = self._blobs.get(old.digest)
        if blob is None or blob.fresh.get(old.index) != old.stamp:
            return  # gone, or read and checked again since: still cached, still fresh
        del blob.fresh[old.index]
        fd = old.fd()
        if fd >= 0:
            self.disk.submit_pages(diskio.release_pages, fd, old.offset, old.length)

    # -- the data file -----------------------------------------------------------------

    def _check_file(self, blob: Blob) -> None:
        """Raise ``BlobEvictedError`` (after removing the blob) if its data file is gone,
        truncated or grown; make every piece stale if someone else wrote it."""
        try:
            st = os.fstat(blob.fileno())
        except FileNotFoundError:
            self._lose(blob, "its data file is missing")
        if st.st_nlink == 0:
            self._lose(blob, "its data file was deleted")
        if st.st_size != blob.size:
            self._lose(blob, f"its data file has {st.st_size} bytes, not {blob.size}")
        if blob.writing:
            return  # our own writes move the mtime now: nothing to tell from it
        if blob.file_mtime is not None and st.st_mtime_ns != blob.file_mtime:
            log.warning(
                "the data file of %s was written by someone else: every piece is checked "
                "again before it is sent", blob.digest,
            )  # fmt: skip
            blob.fresh.clear()
            for index in blob.present.indices():
                blob.verified.clear(index)
        blob.file_mtime = st.st_mtime_ns

    def check_intact(self, digest: str) -> bool:
        """Before a blob is served: whether it is still here. A data file deleted,
        truncated or grown loses the blob now, so the caller fetches it anew in this
        request instead of cutting the stream at its first read."""
        blob = self._blobs.get(digest)
        if blob is None:
            return False
        if not blob.has_files:
            return True  # still being made: nothing to check yet
        try:
            self._check_file(blob)
        except BlobEvictedError:
            return False
        return True

    def _note_written(self, blob: Blob) -> None:
        """After our own writes: the mtime they left is ours, not a stranger's."""
        if blob.writing:
            return
        try:
            blob.file_mtime = os.fstat(blob.fileno()).st_mtime_ns
        except OSError:
            blob.file_mtime = None

    def _lose(self, blob: Blob, why: str) -> NoReturn:
        log.warning("dropping %s: %s; it is fetched again on its next request", blob.digest, why)
        if self._blobs.get(blob.digest) is blob:
            del self._blobs[blob.digest]
            self._drop(blob, BlobEvictedError(f"{blob.digest}: {why}"))
        raise BlobEvictedError(f"{blob.digest}: {why}")

    # -- the check on read ---------------------------------------------------------------

    async def _ensure_verified(
        self, blob: Blob, indices: Iterable[int], *, send: bool = True
    ) -> None:
        """Every piece of ``indices`` present and known good, or raise: ``PieceMissingError``
        (absent), ``PieceDroppedError`` (failed its check, now absent), ``BlobEvictedError``
        (the blob's data is gone). ``send``: good where a send takes it from (fresh in the
        page cache); else checked once in this process (what ``finish`` needs)."""
        indices = list(indices)
        if not indices:
            return
        for index in indices:
            if not blob.present[index]:
                raise PieceMissingError(f"{blob.digest} piece {index} not present")
        self._check_file(blob)
        for index in indices:
            if (index in blob.fresh) if send else blob.verified[index]:
                continue
            if not blob.present[index]:
                raise PieceMissingError(f"{blob.digest} piece {index} not present")
            pending = blob.verifying.get(index)
            if pending is None:
                pending = asyncio.ensure_future(self._verify_piece(blob, index))
                blob.verifying[index] = pending
                pending.add_done_callback(functools.partial(_checked, blob, index))
            await asyncio.shield(pending)

    async def _verify_piece(self, blob: Blob, index: int) -> None:
        if self._blobs.get(blob.digest) is not blob:
            raise BlobEvictedError(f"{blob.digest} removed")
        if blob.hashes[index] is None:
            await self._verify_whole(blob)
            if index in blob.fresh:
                return
        expect = blob.hashes[index]
        assert expect is not None
        try:
            got = await self.disk.run(
                diskio.hash_range, blob.fileno(), blob.offset(index), blob.piece_length(index)
            )
        except OSError as exc:
            self._drop_piece(blob, index, f"cannot be read ({exc.strerror or exc})")
        if not blob.present[index]:
            raise PieceMissingError(f"{blob.digest} piece {index} not present")
        if got != expect:
            self._drop_piece(blob, index, "its bytes on disk no longer match its sha256")
        blob.verified.set(index)
        self._fresh(blob, index)

    async def _verify_whole(self, blob: Blob) -> None:
        """Pieces without a hash of their own: hash the whole blob once, against its
        digest and piece by piece; journal the piece hashes (checks per piece from then
        on). A mismatch removes the blob: nothing tells which piece is bad."""
        if not blob.complete:
            await blob.completion()  # only the whole digest vouches for such a piece
        whole, parts = await self.disk.run(
            diskio.hash_pieces, blob.fileno(), blob.size, blob.piece_size
        )
        if self._blobs.get(blob.digest) is not blob:
            raise BlobEvictedError(f"{blob.digest} removed while it was checked")
        if "sha256:" + whole.hex() != blob.digest:
            self._lose(blob, "its bytes no longer hash to its digest")
        for index, sha in enumerate(parts):
            if blob.hashes[index] is None:
                blob.hashes[index] = sha
                try:
                    blob.journal_append(jr.RecordKind.PIECE, index, sha)
                except OSError:
                    pass  # computed again after a restart
        for index in blob.present.indices():
            blob.verified.set(index)
            self._fresh(blob, index)

    def _drop_piece(self, blob: Blob, index: int, why: str) -> NoReturn:
        """Raise ``PieceDroppedError`` after taking the piece out of the store."""
        log.warning("dropping piece %d of %s: %s", index, blob.digest, why)
        if blob.present[index]:
            blob.present.clear(index)
            blob.verified.clear(index)
            blob.fresh.pop(index, None)
            blob.complete = False
            blob.vouched = False
            length = blob.piece_length(index)
            blob.used -= length
            if self._blobs.get(blob.digest) is blob:
                self._used -= length
            self.hot.discard((blob.digest, index))
            try:
                blob.journal_append(jr.RecordKind.DROP, index, bytes(HASH_SIZE))
            except OSError:
                log.warning("could not journal the drop of %s piece %d", blob.digest, index)
            for listener in self._drop_listeners:
                listener(blob.digest, index)
        raise PieceDroppedError(f"{blob.digest} piece {index} failed its check on read: {why}")


def _checked(blob: Blob, index: int, fut: asyncio.Future[None]) -> None:
    """A check is over: the next reader starts its own (and its error is retrieved)."""
    if blob.verifying.get(index) is fut:
        del blob.verifying[index]
    if not fut.cancelled():
        fut.exception()
