"""How piece bytes reach the disk without paying for fresh page-cache pages.

Measured on the test VM (Firecracker, ext4 on virtio-blk, 2026-12-01, CPU per byte
written, ``bench/datapath.py`` prints the same figures beside every run):

| strategy | CPU ns/B |
|---|---|
| buffered ``pwrite`` into fresh page-cache pages | 3.7-4.0 |
| the same, each piece's pages written back and dropped once 32 MiB newer were written | 0.4-0.5 |
| ``O_DIRECT`` | 0.07-0.15 |

A fresh page costs that much because the guest reports free pages to the host
(``virtio_balloon`` free-page reporting): the first touch of each one is a host fault.
Pages that are freed and taken again within seconds are never reported, so a writer
that keeps recycling the same few thousand page-cache pages pays almost nothing. Both
strategies of ``aioEnable`` therefore avoid fresh pages; they keep its documented
meaning ("1 for high-performance disks"):

- ``aioEnable: 0`` (default) — **buffered through a bounded page-cache window**:
  ``pwrite`` into the page cache, writeback started at once (``sync_file_range``); once
  ``window`` newer bytes were written, a piece's pages are waited for and dropped
  (``POSIX_FADV_DONTNEED``), so the kernel hands the same pages to the next piece. The
  newest pieces stay hot for ``sendfile`` to peers and the runtime; a slow disk is
  written in the background, never waited on while its piece is still hot.
- ``aioEnable: 1`` — **direct**: ``O_DIRECT`` from page-aligned buffers; the device
  DMAs the bytes, no CPU copy and no page-cache pages at all. The store serves the
  newest pieces from the buffers they arrived in (``PieceStore`` keeps them) and older
  ones from disk. Unaligned buffers are copied into an aligned per-thread scratch
  buffer (the pools hand out aligned ones, so that is rare); the unaligned tail of a
  blob's last piece and file systems without ``O_DIRECT`` (tmpfs) fall back to buffered.

Both reserve the piece's blocks with ``posix_fallocate`` first, so a full disk fails
here with ENOSPC instead of later at writeback (or as SIGBUS, had we used a mapping).
Everything here runs on the store's disk threads, never on the event loop (small
pieces excepted, see ``store.py``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import hashlib
import os
import threading
from typing import Any

from shoal.cache.buffers import ALIGN, aligned_buffer, is_aligned
from shoal.cache.errors import PieceCorruptError

Buffer = bytes | bytearray | memoryview

_scratch = threading.local()

_SYNC_WAIT_BEFORE, _SYNC_WRITE, _SYNC_WAIT_AFTER = 1, 2, 4


def _libc_sync_file_range() -> Any:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        fn = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_sync_file_range = _libc_sync_file_range()


def write_buffered(fd: int, offset: int, data: Buffer, *, writeback: bool = False) -> None:
    """``pwrite`` through the page cache; ``writeback`` starts writing the pages out now."""
    view = memoryview(data).cast("B")
    _reserve(fd, offset, len(view))
    _pwrite_all(fd, view, offset)
    if writeback and _sync_file_range is not None:
        _sync_file_range(fd, offset, len(view), _SYNC_WRITE)


def release_pages(fd: int, offset: int, length: int) -> None:
    """Wait for a range's writeback, then drop its pages from the page cache so that
    the kernel reuses them (a page once dropped is not fresh to the host for seconds)."""
    if _sync_file_range is not None:
        _sync_file_range(fd, offset, length, _SYNC_WAIT_BEFORE | _SYNC_WRITE | _SYNC_WAIT_AFTER)
    try:
        os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)
    except OSError:
        pass  # a closed or replaced descriptor: nothing to drop


def write_direct(fd: int, direct_fd: int, offset: int, data: Buffer) -> None:
    """``O_DIRECT`` for the aligned body, buffered for an unaligned tail."""
    view = memoryview(data).cast("B")
    body = len(view) - len(view) % ALIGN
    if direct_fd < 0 or offset % ALIGN or not body:
        write_buffered(fd, offset, view)
        return
    _reserve(fd, offset, len(view))
    src = view[:body]
    if not is_aligned(src):
        scratch = _scratch_buffer(body)
        scratch[:] = src
        src = scratch
    _pwrite_all(direct_fd, src, offset)
    if body < len(view):
        _pwrite_all(fd, view[body:], offset + body)


def open_direct(path: str | os.PathLike[str]) -> int:
    """An ``O_DIRECT`` descriptor, or -1 where the file system has no direct I/O."""
    flag = getattr(os, "O_DIRECT", 0)
    if not flag:
        return -1
    try:
        return os.open(path, os.O_RDWR | flag)
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):
            return -1
        raise


def _reserve(fd: int, offset: int, length: int) -> None:
    try:
        os.posix_fallocate(fd, offset, length)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise


def _pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    done = 0
    while done < len(view):
        n = os.pwrite(fd, view[done:], offset + done)
        if n <= 0:
            raise OSError(errno.EIO, "pwrite wrote nothing")
        done += n


def _scratch_buffer(size: int) -> memoryview:
    buf: memoryview | None = getattr(_scratch, "buf", None)
    if buf is None or len(buf) < size:
        buf = aligned_buffer(size)
        _scratch.buf = buf
    return buf[:size]


def sha256_of(data: bytes | bytearray | memoryview) -> bytes:
    return hashlib.sha256(data).digest()


def check_and_write(
    direct: bool,
    fd: int,
    direct_fd: int,
    offset: int,
    data: bytes | bytearray | memoryview,
    sha256: bytes | None,
    known: bytes | None,
    what: str,
    hashed: bool = True,
) -> bytes | None:
    """Runs on a disk thread: nothing is written unless the bytes match ``known``.
    ``hashed=False`` (and nothing known): written without a hash of its own, None."""
    if sha256 is None and (hashed or known is not None):
        sha256 = sha256_of(data)
    if known is not None and known != sha256:
        raise PieceCorruptError(f"{what}: sha256 mismatch")
    if direct:
        write_direct(fd, direct_fd, offset, data)
    else:
        write_buffered(fd, offset, data, writeback=True)
    return sha256


def hash_range(fd: int, offset: int, length: int) -> bytes:
    """sha256 of ``length`` bytes at ``offset``, read through the page cache (so that a
    ``sendfile`` right after sends the very pages that were hashed)."""
    h = hashlib.sha256()
    view = _scratch_buffer(min(4 << 20, max(length, 1)))
    end = offset + length
    while offset < end:
        n = os.preadv(fd, [view[: min(len(view), end - offset)]], offset)
        if n <= 0:
            raise OSError(errno.EIO, "short read while hashing")
        h.update(view[:n])
        offset += n
    return h.digest()


def hash_pieces(fd: int, size: int, piece_size: int) -> tuple[bytes, list[bytes]]:
    """The whole file's sha256 and each piece's, in one pass over the bytes."""
    whole = hashlib.sha256()
    parts: list[bytes] = []
    view = _scratch_buffer(min(4 << 20, piece_size))
    for start in range(0, size, piece_size):
        piece = hashlib.sha256()
        offset, end = start, min(start + piece_size, size)
        while offset < end:
            n = os.preadv(fd, [view[: min(len(view), end - offset)]], offset)
            if n <= 0:
                raise OSError(errno.EIO, "short read while hashing")
            whole.update(view[:n])
            piece.update(view[:n])
            offset += n
        parts.append(piece.digest())
    return whole.digest(), parts


def hash_file(fd: int, size: int) -> bytes:
    h = hashlib.sha256()
    view = _scratch_buffer(4 << 20)
    offset = 0
    while offset < size:
        n = os.preadv(fd, [view[: min(len(view), size - offset)]], offset)
        if n <= 0:
            raise OSError(errno.EIO, "short read while hashing")
        h.update(view[:n])
        offset += n
    return h.digest()
