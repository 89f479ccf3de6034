"""How one blob lives on disk: a sparse data file, a meta file, and an append-only journal.

```
<cache path>/blobs/sha256/<hex>/data      the blob's bytes at their offsets (sparse)
<cache path>/blobs/sha256/<hex>/meta.json size, piece size, piece hashes known at create
<cache path>/blobs/sha256/<hex>/journal   44-byte records: piece landed / dropped / complete
```

Why a journal rather than rewriting an index: a piece landing costs one 44-byte
``write`` instead of rewriting a record that grows with the piece count, and a torn
last record (crash mid-write) is recognised by its CRC and cut off. Nothing is fsynced
on the request path, neither per piece nor per blob: the store fsyncs what changed in
one batch every few seconds, off the event loop (``PieceStore.sync``). After a crash
the journal may name a piece whose bytes never reached the disk. That is why the store
re-hashes every piece the first time it is read after a
restart (see ``store.py``) and drops the ones that no longer match: correctness comes
from the hash, not from write ordering, and the hot path pays no fsync.
"""

from __future__ import annotations

import enum
import os
import shutil
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import msgspec

META_VERSION = 1

_RECORD = struct.Struct("!B3xI32s")
_CRC = struct.Struct("!I")
RECORD_SIZE = _RECORD.size + _CRC.size


#: the ``digest`` of a PIECE record whose piece has no hash of its own: the blob's whole
#: digest vouches for it (``PieceStore.write_piece(hashed=False)``)
NO_HASH = bytes(32)


class RecordKind(enum.IntEnum):
    PIECE = 1  # piece ``index`` landed with sha256 ``digest`` (or NO_HASH)
    DROP = 2  # piece ``index`` is gone (failed re-verification)
    COMPLETE = 3  # whole blob verified against its digest; ``digest`` is that digest


@dataclass(frozen=True, slots=True)
class Record:
    kind: RecordKind
    index: int
    digest: bytes


class BlobMeta(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    version: int
    digest: str
    size: int
    piece_size: int
    #: hex sha256 per piece when known at create (from the root), else None
    hashes: list[str | None] | None = None


def blob_dir(root: Path, digest: str) -> Path:
    algo, _, hexpart = digest.partition(":")
    return root / "blobs" / algo / hexpart


def data_path(directory: Path) -> Path:
    return directory / "data"


def write_meta(directory: Path, meta: BlobMeta) -> None:
    """Write ``meta.json`` (temp file, rename): never half-visible, but not fsynced.

    An fsync here cost 2.8 ms of every cold blob's request (issue 13). After a crash
    before the batched sync (``sync_meta``) the file may be empty or missing; the blob
    is then dropped at start (an unreadable meta) and fetched again: a cache loses a
    blob, never serves a wrong one (pieces are re-hashed after a restart anyway).
    """
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / "meta.json.tmp"
    tmp.write_bytes(msgspec.json.encode(meta))
    tmp.replace(directory / "meta.json")


def sync_meta(directory: Path) -> None:
    """fsync ``meta.json`` and the directory entry (the batched half of ``write_meta``)."""
    for path, flags in ((directory / "meta.json", os.O_RDONLY), (directory, os.O_RDONLY)):
        try:
            fd = os.open(path, flags)
        except FileNotFoundError:
            return
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def read_meta(directory: Path) -> BlobMeta:
    """Raise ``ValueError`` if the meta file is missing or unreadable."""
    try:
        raw = (directory / "meta.json").read_bytes()
        meta = msgspec.json.decode(raw, type=BlobMeta)
    except (OSError, msgspec.DecodeError) as exc:
        raise ValueError(f"{directory}: bad meta.json: {exc}") from exc
    if meta.version != META_VERSION:
        raise ValueError(f"{directory}: meta version {meta.version} not understood")
    return meta


def encode_record(kind: RecordKind, index: int, digest: bytes) -> bytes:
    body = _RECORD.pack(kind, index, digest)
    return body + _CRC.pack(zlib.crc32(body))


def replay(directory: Path) -> list[Record]:
    """Every intact record in order; a torn or corrupt tail is cut off the file."""
    path = directory / "journal"
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return []
    records: list[Record] = []
    good = 0
    for off in range(0, len(raw) - RECORD_SIZE + 1, RECORD_SIZE):
        body = raw[off : off + _RECORD.size]
        (crc,) = _CRC.unpack_from(raw, off + _RECORD.size)
        if zlib.crc32(body) != crc:
            break
        kind, index, digest = _RECORD.unpack(body)
        try:
            records.append(Record(RecordKind(kind), index, digest))
        except ValueError:
            break
        good = off + RECORD_SIZE
    if good != len(raw):
        os.truncate(path, good)
    return records


class Journal:
    """The append side of one blob's journal; one ``write`` per record."""

    __slots__ = ("_fd",)

    def __init__(self, directory: Path) -> None:
        self._fd = os.open(directory / "journal", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def append(self, kind: RecordKind, index: int, digest: bytes) -> None:
        record = encode_record(kind, index, digest)
        written = os.write(self._fd, record)
        if written != len(record):  # a short append: cut it so replay stays aligned
            os.ftruncate(self._fd, os.lseek(self._fd, 0, os.SEEK_END) - written)
            raise OSError(28, "short write to journal")

    def sync(self) -> None:
        if self._fd >= 0:
            os.fsync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def create_files(directory: Path, meta: BlobMeta) -> None:
    """A fresh blob directory: meta written, data file sized (sparse)."""
    if directory.exists():
        shutil.rmtree(directory)
    write_meta(directory, meta)
    with data_path(directory).open("wb") as fh:
        fh.truncate(meta.size)
