"""The audit log: one line per operation, in the reference system's exact form.

``2022/08/30 15:44:52|AUDIT|th=00007FBA247C5280|http:pread[pathname=...][offset=...]
[size=...][latency=...]`` (one line). ``size`` is the bytes the operation moved, negative
when it failed; ``latency`` is microseconds from receipt to answer. The reference writes a
thread pointer after ``th=``; shoal runs on one event loop, so it writes the id of the
asyncio task that did the work, which tells concurrent operations apart the same way.

In ``file`` mode the log goes to ``logDir/audit.log`` and is rotated by size
(``logAuditMaxSize``, ``logAuditBackups``: ``audit.log.1`` is the newest old file) with
the standard library's ``RotatingFileHandler``, so a busy node cannot fill its disk
with audit lines.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from logging.handlers import RotatingFileHandler
from pathlib import Path
from typing import TextIO

from shoal.config import DeployConfig
from shoal.errors import ConfigInvalidError

log = logging.getLogger(__name__)

#: file name of the audit log inside ``DeployConfig.logDir``
AUDIT_FILE = "audit.log"

#: operation codes of the reference system
HTTP_PREAD = "http:pread"
RPC_STAT = "rpc:stat"
RPC_PREAD = "rpc:pread"
DOWNLOAD = "download"
FILEWRITE = "filewrite"
FILEREAD = "fileread"
#: shoal's own, in the same line form: a preheat job's blob stored on a node (``pathname``
#: the digest), a job created at a root or ended on a node (the image); a root writes
#: ``preheat:done``, ``preheat:failed``, ``preheat:cancelled``, ``preheat:expired``
#: when a job ends there
PREHEAT_BLOB = "preheat:blob"
PREHEAT_JOB = "preheat:job"


class AuditRecord:
    """Filled in while an operation runs; written when it ends."""

    __slots__ = ("offset", "size")

    def __init__(self, offset: int) -> None:
        self.offset = offset
        self.size = 0


class AuditFile(RotatingFileHandler):
    """``audit.log``, rotated by size; a failed write is logged once, never raised into
    the operation being audited."""

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        super().__init__(path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
        self.setFormatter(logging.Formatter("%(message)s"))
        self.failed = False

    def write_line(self, line: str) -> None:
        self.emit(logging.makeLogRecord({"msg": line, "levelno": logging.INFO}))

    def handleError(self, record: logging.LogRecord) -> None:
        if not self.failed:
            self.failed = True
            exc = sys.exc_info()[1]
            log.error("audit log %s: cannot write: %s (further failures are not logged)",
                      self.baseFilename, exc)  # fmt: skip

    def __repr__(self) -> str:
        return f"<AuditFile {self.baseFilename} max={self.maxBytes} backups={self.backupCount}>"


class AuditLog:
    def __init__(self, sink: TextIO | AuditFile | None) -> None:
        self._sink = sink
        self._owned = False

    @classmethod
    def from_config(cls, deploy: DeployConfig) -> AuditLog:
        """The configured log; ``ConfigInvalidError`` naming ``logDir`` if it cannot be
        written."""
        if not deploy.log_audit:
            return cls(None)
        if deploy.log_audit_mode == "stdout":
            return cls(sys.stdout)
        path = Path(deploy.log_dir)
        try:
            path.mkdir(parents=True, exist_ok=True)
            sink = AuditFile(path / AUDIT_FILE, deploy.log_audit_max_size, deploy.log_audit_backups)
        except OSError as exc:
            raise ConfigInvalidError(
                f"DeployConfig.logDir: cannot write {exc.filename or path}: {exc.strerror}"
            ) from exc
        audit = cls(sink)
        audit._owned = True
        return audit

    @property
    def enabled(self) -> bool:
        return self._sink is not None

    def record(self, op: str, pathname: str, offset: int, size: int, latency_s: float) -> None:
        if self._sink is None:
            return
        line = format_line(op, pathname, offset, size, latency_s, time.time())
        if isinstance(self._sink, AuditFile):
            self._sink.write_line(line)
        else:
            self._sink.write(line)
            self._sink.write("\n")

    @contextmanager
    def timed(self, op: str, pathname: str, offset: int = 0) -> Iterator[AuditRecord]:
        """Time an operation; a failure is recorded with a negative size, then re-raised."""
        rec = AuditRecord(offset)
        start = time.perf_counter()
        try:
            yield rec
        except BaseException:
            self.record(
                op,
                pathname,
                rec.offset,
                -1 if rec.size >= 0 else rec.size,
                time.perf_counter() - start,
            )
            raise
        self.record(op, pathname, rec.offset, rec.size, time.perf_counter() - start)

    def close(self) -> None:
        if self._owned and self._sink is not None:
            self._sink.close()
        self._sink = None


def _thread_tag() -> int:
    try:
        task = asyncio.current_task()
    except RuntimeError:
        task = None
    return id(task) if task is not None else threading.get_ident()


def format_line(
    op: str, pathname: str, offset: int, size: int, latency_s: float, wall: float
) -> str:
    stamp = time.strftime("%Y/%m/%d %H:%M:%S", time.localtime(wall))
    latency_us = max(int(latency_s * 1e6), 0)
    return (
        f"{stamp}|AUDIT|th={_thread_tag() & 0xFFFFFFFFFFFFFFFF:016X}|{op}"
        f"[pathname={pathname}][offset={offset}][size={size}][latency={latency_us}]"
    )
