"""The audit log: one line per operation, in the reference system's exact form.

``2022/08/30 15:44:52|AUDIT|th=00007FBA247C5280|http:pread[pathname=...][offset=...]
[size=...][latency=...]`` (one line). ``size`` is the bytes the operation moved, negative
when it failed; ``latency`` is microseconds from receipt to answer. The reference writes a
thread pointer after ``th=``; shoal runs on one event loop, so it writes the id of the
asyncio task that did the work, which tells concurrent operations apart the same way.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from shoal.config import DeployConfig

#: operation codes of the reference system
HTTP_PREAD = "http:pread"
RPC_STAT = "rpc:stat"
RPC_PREAD = "rpc:pread"
DOWNLOAD = "download"
FILEWRITE = "filewrite"
FILEREAD = "fileread"


class AuditRecord:
    """Filled in while an operation runs; written when it ends."""

    __slots__ = ("offset", "size")

    def __init__(self, offset: int) -> None:
        self.offset = offset
        self.size = 0


class AuditLog:
    def __init__(self, sink: TextIO | None) -> None:
        self._sink = sink
        self._owned = False

    @classmethod
    def from_config(cls, deploy: DeployConfig) -> AuditLog:
        if not deploy.log_audit:
            return cls(None)
        if deploy.log_audit_mode == "stdout":
            return cls(sys.stdout)
        path = Path(deploy.log_dir)
        path.mkdir(parents=True, exist_ok=True)
        log = cls((path / "audit.log").open("a", encoding="utf-8", buffering=1))
        log._owned = True
        return log

    @property
    def enabled(self) -> bool:
        return self._sink is not None

    def record(self, op: str, pathname: str, offset: int, size: int, latency_s: float) -> None:
        if self._sink is None:
            return
        self._sink.write(format_line(op, pathname, offset, size, latency_s, time.time()))
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
