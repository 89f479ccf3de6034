"""Every node starts at the same instant: processes parked on a FIFO, released together.

Spawning N ``ip netns exec`` processes takes tens of milliseconds each on a busy machine;
started one after another, the first node would get a head start worth a large part of a
small image. So each client is spawned as ``sh -c 'read _ < FIFO; exec client...'``; once
every FIFO has its reader (a non-blocking open for writing stops failing), one line to
each releases them all within microseconds, and the release time is the start of the
clock for every node.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from shoal.bench.errors import BenchError
from shoal.bench.proc import in_netns

PARK = 'read _ < "$0"; exec "$@"'


@dataclass(slots=True)
class Parked:
    netns: str
    fifo: Path
    proc: asyncio.subprocess.Process
    log: IO[bytes]


@dataclass(slots=True)
class Gate:
    """Spawn parked clients with ``park``, then start them all with ``release``."""

    rundir: Path
    parked: list[Parked] = field(default_factory=list)

    async def park(self, netns: str, argv: Sequence[str], log_path: Path) -> Parked:
        fifo = self.rundir / f"gate-{len(self.parked)}.fifo"
        fifo.unlink(missing_ok=True)
        os.mkfifo(fifo)
        log = log_path.open("ab")
        proc = await asyncio.create_subprocess_exec(
            *in_netns(netns, ["sh", "-c", PARK, str(fifo), *argv]),
            stdout=log,
            stderr=log,
            stdin=asyncio.subprocess.DEVNULL,
        )
        parked = Parked(netns, fifo, proc, log)
        self.parked.append(parked)
        return parked

    async def release(self, timeout_s: float = 30.0) -> float:
        """Release every parked client at once; return the wall-clock start time."""
        fds: list[int] = []
        deadline = time.monotonic() + timeout_s
        try:
            for p in self.parked:
                while True:
                    try:
                        fds.append(os.open(p.fifo, os.O_WRONLY | os.O_NONBLOCK))
                        break
                    except OSError as exc:
                        if exc.errno != errno.ENXIO:
                            raise
                    if p.proc.returncode is not None:
                        raise BenchError(f"client in {p.netns} exited before the start")
                    if time.monotonic() > deadline:
                        raise BenchError(f"client in {p.netns} not ready in {timeout_s:.0f}s")
                    await asyncio.sleep(0.01)
            start = time.time()
            for fd in fds:
                os.write(fd, b"go\n")
            return start
        finally:
            for fd in fds:
                os.close(fd)

    async def aclose(self) -> None:
        """Kill what is still running (by PID), reap it, close logs and FIFOs."""
        for p in self.parked:
            if p.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    p.proc.kill()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(p.proc.wait(), 5)
            p.log.close()
            p.fifo.unlink(missing_ok=True)
        self.parked = []
