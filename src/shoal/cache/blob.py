"""One blob's live state in the store, and the read-only snapshot callers get.

``Blob`` is the store's own mutable record (its files, bitfields, waiters, pins);
nothing outside ``cache/`` holds one. Callers get ``BlobInfo``, a frozen snapshot that is
safe to keep and compare.
"""

from __future__ import annotations

import asyncio
import errno
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from shoal.cache import diskio
from shoal.cache import journal as jr
from shoal.cache.bitfield import Bitfield
from shoal.cache.errors import BlobConflictError, DiskFullError, PieceMissingError, PieceWriteError
from shoal.cache.layout import check_digest, check_geometry, piece_count, piece_length

_NO_SPACE = {errno.ENOSPC, errno.EDQUOT}


@dataclass(frozen=True, slots=True)
class BlobInfo:
    digest: str
    size: int
    piece_size: int
    piece_count: int
    complete: bool
    #: present-pieces bitfield in wire layout (``Bitfield.to_bytes()``)
    present: bytes
    present_count: int
    #: sha256 of each piece where known: given at create (from the root), or computed
    #: when the piece was written; None for a piece of a blob an agent fetched from the
    #: origin for itself, which only its whole digest vouches for (nobody needs the
    #: piece hashes of such a blob, so they are not paid for: ``write_piece(hashed=)``)
    hashes: tuple[bytes | None, ...]

    def piece_length(self, index: int) -> int:
        return piece_length(self.size, self.piece_size, index)

    def has(self, index: int) -> bool:
        return bool(self.present[index >> 3] & (0x80 >> (index & 7)))


@dataclass(eq=False, slots=True)
class Blob:
    digest: str
    size: int
    piece_size: int
    directory: Path
    hashes: list[bytes | None]
    present: Bitfield
    verified: Bitfield
    complete: bool = False
    used: int = 0
    pins: int = 0
    last_used: int = 0
    waiters: dict[int, list[asyncio.Future[None]]] = field(default_factory=dict)
    #: waiters for a piece to be present *or* staged (``PieceStore.wait_readable``)
    readers: dict[int, list[asyncio.Future[None]]] = field(default_factory=dict)
    #: waiters for ``complete`` (``PieceStore.wait_complete``)
    done_waiters: list[asyncio.Future[None]] = field(default_factory=list)
    #: the whole digest is checked, pieces may still be being written (``vouch``)
    vouched: bool = False
    vouch_waiters: list[asyncio.Future[None]] = field(default_factory=list)
    #: why the blob went (evicted, dropped, store closed): a waiter asked for after that
    #: fails at once instead of waiting for a piece that can no longer land
    gone: BaseException | None = None
    #: meta or journal written since the last batched fsync (``PieceStore.sync``)
    dirty: bool = False
    #: the files being made on a disk thread (``PieceStore.create`` does not wait)
    creating: asyncio.Future[None] | None = None
    #: pieces whose page-cache copy is known good, with their turn in the page window
    #: (``integrity.py``); every other present piece is hashed before it is sent
    fresh: dict[int, int] = field(default_factory=dict)
    #: checks of pieces under way (readers of one piece share one)
    verifying: dict[int, asyncio.Future[None]] = field(default_factory=dict)
    #: writes of ours under way, and the data file's mtime our last one left
    writing: int = 0
    file_mtime: int | None = None
    #: removed while pinned: its files close when the last pin goes (``unpin``), never
    #: under a ``sendfile`` still reading them
    closing: bool = False
    _file: io.FileIO | None = None
    _direct_fd: int | None = None
    _journal: jr.Journal | None = None

    @classmethod
    def load(cls, directory: Path, meta: jr.BlobMeta, records: list[jr.Record]) -> Blob:
        count = piece_count(meta.size, meta.piece_size)
        hashes: list[bytes | None] = [None] * count
        if meta.hashes is not None:
            if len(meta.hashes) != count:
                raise ValueError(f"{len(meta.hashes)} hashes for {count} pieces")
            hashes = [None if h is None else bytes.fromhex(h) for h in meta.hashes]
        blob = cls(
            digest=meta.digest,
            size=meta.size,
            piece_size=meta.piece_size,
            directory=directory,
            hashes=hashes,
            present=Bitfield(count),
            verified=Bitfield(count),
        )
        for rec in records:
            if rec.kind is jr.RecordKind.COMPLETE:
                blob.complete = blob.present.all()
                continue
            if rec.index >= count:
                raise ValueError(f"journal names piece {rec.index} of {count}")
            if rec.kind is jr.RecordKind.PIECE:
                unhashed = rec.digest == jr.NO_HASH
                if unhashed and blob.hashes[rec.index] is None:
                    blob.mark_present(rec.index, None, verified=False)
                    continue  # vouched for by the whole digest (below)
                if blob.hashes[rec.index] not in (None, rec.digest):
                    continue  # journal disagrees with the root's hash: not trusted
                blob.mark_present(rec.index, rec.digest, verified=False)
            elif blob.present[rec.index]:
                blob.present.clear(rec.index)
                blob.used -= blob.piece_length(rec.index)
                blob.complete = False
        if not blob.complete:
            # a piece without a hash of its own can only be checked by the whole digest,
            # and an incomplete blob has none yet: it is fetched again
            for index in list(blob.present.indices()):
                if blob.hashes[index] is None:
                    blob.present.clear(index)
                    blob.used -= blob.piece_length(index)
        return blob

    def piece_length(self, index: int) -> int:
        if not 0 <= index < self.present.size:
            raise PieceMissingError(f"{self.digest} has no piece {index}")
        return piece_length(self.size, self.piece_size, index)

    def offset(self, index: int) -> int:
        return index * self.piece_size

    def check_range(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise PieceMissingError(f"{self.digest}: range {offset}+{length} beyond {self.size}")

    def mark_present(self, index: int, sha256: bytes | None, *, verified: bool) -> None:
        if not self.present[index]:
            self.present.set(index)
            self.used += self.piece_length(index)
        self.hashes[index] = sha256
        if verified:
            self.verified.set(index)

    def adopt_hashes(self, hashes: Sequence[bytes]) -> None:
        if len(hashes) != len(self.hashes):
            raise BlobConflictError(f"{self.digest}: {len(hashes)} hashes, want {len(self.hashes)}")
        for i, h in enumerate(hashes):
            if self.hashes[i] is not None and self.hashes[i] != h:
                raise BlobConflictError(f"{self.digest}: piece {i} hash disagrees")
        self.hashes = list(hashes)

    def info(self) -> BlobInfo:
        return BlobInfo(
            digest=self.digest,
            size=self.size,
            piece_size=self.piece_size,
            piece_count=self.present.size,
            complete=self.complete,
            present=self.present.to_bytes(),
            present_count=self.present.count,
            hashes=tuple(self.hashes),
        )

    # -- files ---------------------------------------------------------------------

    async def created(self) -> None:
        """Once the blob's files exist (raises the ``OSError`` that kept them from it)."""
        if self.creating is not None:
            await asyncio.shield(self.creating)

    @property
    def has_files(self) -> bool:
        creating = self.creating
        return creating is None or (creating.done() and creating.exception() is None)

    def file(self) -> io.FileIO:
        if self._file is None:
            self._file = io.FileIO(jr.data_path(self.directory), "r+")
        return self._file

    def fileno(self) -> int:
        return self.file().fileno()

    def open_fileno(self) -> int:
        """The data file's descriptor if it is open, else -1 (never opens it)."""
        return -1 if self._file is None or self._file.closed else self._file.fileno()

    def direct_fileno(self) -> int:
        """An ``O_DIRECT`` descriptor of the data file, or -1 if the file system has none."""
        if self._direct_fd is None:
            self._direct_fd = diskio.open_direct(jr.data_path(self.directory))
        return self._direct_fd

    def make_files(self, meta: jr.BlobMeta) -> None:
        """A fresh blob's directory, meta, data file and open journal (a disk thread:
        nothing touches the journal before ``created()``)."""
        jr.create_files(self.directory, meta)
        self._journal = jr.Journal(self.directory)

    def journal_append(self, kind: jr.RecordKind, index: int, digest: bytes) -> None:
        if self._journal is None:
            self._journal = jr.Journal(self.directory)
        self._journal.append(kind, index, digest)
        self.dirty = True

    def sync_files(self) -> None:
        """fsync the journal and meta (a disk thread, in a batch; never per piece)."""
        self.dirty = False
        if self._journal is not None:
            self._journal.sync()
        jr.sync_meta(self.directory)

    def unpin(self) -> None:
        self.pins -= 1
        if not self.pins and self.closing:
            self.close_files()

    def close_files(self, *, later: bool = False) -> None:
        """Close the data file, its direct twin and the journal; ``later``: once unpinned."""
        if later and self.pins:
            self.closing = True
            return
        self.closing = False
        if self._direct_fd is not None and self._direct_fd >= 0:
            os.close(self._direct_fd)
        self._direct_fd = None
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._journal is not None:
            self._journal.close()
            self._journal = None

    # -- waiters -------------------------------------------------------------------

    def waiter(self, index: int) -> asyncio.Future[None]:
        self.piece_length(index)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.gone is not None:
            fut.set_exception(self.gone)
        else:
            self.waiters.setdefault(index, []).append(fut)
        return fut

    def reader(self, index: int) -> asyncio.Future[None]:
        self.piece_length(index)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.gone is not None:
            fut.set_exception(self.gone)
        else:
            self.readers.setdefault(index, []).append(fut)
        return fut

    def wake(self, index: int) -> None:
        for fut in (*self.waiters.pop(index, ()), *self.readers.pop(index, ())):
            if not fut.done():
                fut.set_result(None)

    def wake_readers(self, index: int) -> None:
        for fut in self.readers.pop(index, ()):
            if not fut.done():
                fut.set_result(None)

    def fail_piece_waiters(self, index: int, exc: BaseException) -> None:
        for fut in (*self.waiters.pop(index, ()), *self.readers.pop(index, ())):
            if not fut.done():
                fut.set_exception(exc)

    def fail_waiters(self, exc: BaseException) -> None:
        """The blob is gone (the store dropped it or closed): every waiter, now and later."""
        self.gone = exc
        waiters, self.waiters = self.waiters, {}
        readers, self.readers = self.readers, {}
        done, self.done_waiters = self.done_waiters, []
        vouch, self.vouch_waiters = self.vouch_waiters, []
        for futs in (*waiters.values(), *readers.values(), done, vouch):
            for fut in futs:
                if not fut.done():
                    fut.set_exception(exc)

    def completion(self) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.complete:
            fut.set_result(None)
        elif self.gone is not None:
            fut.set_exception(self.gone)
        else:
            self.done_waiters.append(fut)
        return fut

    def mark_complete(self) -> None:
        self.complete = True
        self.vouch()
        done, self.done_waiters = self.done_waiters, []
        for fut in done:
            if not fut.done():
                fut.set_result(None)

    def vouching(self) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.vouched or self.complete:
            fut.set_result(None)
        elif self.gone is not None:
            fut.set_exception(self.gone)
        else:
            self.vouch_waiters.append(fut)
        return fut

    def vouch(self) -> None:
        self.vouched = True
        waiters, self.vouch_waiters = self.vouch_waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)


class AuditSink(Protocol):
    """What the store needs of ``shoal.observability.AuditLog`` (a sibling it may not import)."""

    def record(self, op: str, pathname: str, offset: int, size: int, latency_s: float) -> None: ...


@dataclass(frozen=True, slots=True)
class FileRange:
    """Where a verified byte range lives on disk, for ``loop.sendfile``."""

    file: io.FileIO
    offset: int
    length: int


def load_blob(directory: Path) -> Blob:
    meta = jr.read_meta(directory)
    check_digest(meta.digest)
    if jr.blob_dir(directory.parent.parent.parent, meta.digest) != directory:
        raise ValueError(f"meta names {meta.digest}")
    check_geometry(meta.size, meta.piece_size)
    return Blob.load(directory, meta, jr.replay(directory))


def write_error(what: str, exc: OSError) -> PieceWriteError:
    if exc.errno in _NO_SPACE:
        return DiskFullError(f"{what}: disk full ({exc.strerror})")
    return PieceWriteError(f"{what}: {exc.strerror or exc}")
