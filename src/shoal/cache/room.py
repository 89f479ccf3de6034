"""Room for a blob: within ``capacity`` and on the real disk, decided before it is fetched.

Issue 18: on a full disk (a 64 MiB file system, a 200 MiB image) every write failed
with ENOSPC while partial blobs kept the space, and the runtime's streams waited for
pieces that could never be stored. The rules:

- **A new blob must fit before a byte of it is fetched** (``_make_room``, at
  ``create``): its whole size, plus what the downloads under way (pinned, incomplete)
  will still write, within ``capacity`` and within the file system's free space
  (``statvfs``, so other programs' files count too). Idle blobs are evicted to make it
  fit: partial ones first (a download that stopped), then least recently used. If it
  still does not fit, ``create`` raises ``CacheFullError`` / ``DiskFullError`` at once,
  and the mirror relays the blob to its client without storing it.
- **ENOSPC at a write** (another program filled the disk meanwhile) evicts the same
  way and tries the write once more (``_evict_for_disk``); if nothing could go, the
  write fails with ``DiskFullError`` and whoever follows that piece is told at once.
- Freed space is counted from the evicted blobs' own bytes where the file system is
  slow to report it (ext4 returns blocks when its journal commits).
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable
from pathlib import Path

from shoal.cache.blob import Blob
from shoal.cache.errors import BlobEvictedError, CacheFullError, DiskFullError

log = logging.getLogger(__name__)

#: bytes kept free beyond a blob's own, for its meta and journal
MARGIN = 16 << 10


class Room:
    """Mixed into ``PieceStore``: admission by size, eviction for disk space."""

    path: Path
    capacity: int
    _blobs: dict[str, Blob]
    _used: int
    _reserved: int
    _kept: set[str]
    kept_evicted: int
    on_kept_evicted: Callable[[str], None] | None

    def _drop(self, blob: Blob, reason: BlobEvictedError) -> None:  # PieceStore's
        raise NotImplementedError

    def _victim(self, keep: Blob | None = None) -> Blob | None:
        """The blob to evict next: idle (no lease, no operation), kept (preheated)
        blobs last, partial before complete, least recently used first."""
        idle = [b for b in self._blobs.values() if b.pins == 0 and b is not keep]
        if not idle:
            return None
        return min(idle, key=lambda b: (b.digest in self._kept, b.complete, b.last_used))

    def _evict(self, victim: Blob, why: str) -> int:
        """Take ``victim`` out; the bytes it held on disk. A kept blob going is said."""
        log.info("evicting %s (%d bytes) %s", victim.digest, victim.used, why)
        if victim.digest in self._kept:
            self._kept.discard(victim.digest)
            self.kept_evicted += 1
            log.warning("evicting %s although it is kept (preheated): no other room", victim.digest)
            if self.on_kept_evicted is not None:
                self.on_kept_evicted(victim.digest)
        del self._blobs[victim.digest]
        self._drop(victim, BlobEvictedError(f"{victim.digest} evicted {why}"))
        return victim.used

    def _disk_free(self) -> int:
        try:
            st = os.statvfs(self.path)
        except OSError:
            return 1 << 62  # cannot tell: the writes will
        return st.f_bavail * st.f_frsize

    def _make_room(self, digest: str, size: int) -> None:
        """Room for a new blob of ``size`` bytes, or ``CacheFullError``/``DiskFullError``."""
        if size > self.capacity:
            raise CacheFullError(f"{digest}: {size} bytes exceed the capacity {self.capacity}")
        pending = sum(b.size - b.used for b in self._blobs.values() if b.pins and not b.complete)
        before = self._disk_free()
        freed = 0
        while True:
            short_cap = self._used + pending + size - self.capacity
            short_disk = size + pending + MARGIN - max(self._disk_free(), before + freed)
            if short_cap <= 0 and short_disk <= 0:
                return
            victim = self._victim()
            if victim is None:
                if short_cap > 0:
                    raise CacheFullError(
                        f"{digest}: {size} bytes do not fit in capacity {self.capacity} "
                        f"(used {self._used}, {pending} more on their way, nothing evictable)"
                    )
                raise DiskFullError(
                    f"{digest}: {size} bytes do not fit on the disk ({before + freed} free, "
                    f"{pending} more on their way, nothing evictable)"
                )
            freed += self._evict(victim, "for room on the disk" if short_disk > 0 else "for room")

    def _evict_for_disk(self, blob: Blob, exc: OSError, length: int) -> bool:
        """A write of ``blob`` met a full disk: evict until ``length`` bytes are free;
        whether anything went (worth another try)."""
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            return False
        before = self._disk_free()
        freed = 0
        went = False
        while max(self._disk_free(), before + freed) < length + MARGIN:
            victim = self._victim(blob)
            if victim is None:
                break
            freed += self._evict(victim, "for room on the disk")
            went = True
        if not went:
            log.warning("the disk under %s is full and nothing can be evicted", self.path)
        return went
