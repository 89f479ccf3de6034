"""The machine's CPU use while a mode runs, from ``/proc/stat``.

On a two-core machine a BitTorrent swarm of N clients or N agents can saturate the CPU
before the links are full; then a mode's times measure the CPU, not the method. The
meter samples the aggregate line every ``interval`` seconds so that the report can give
the mean and flag a mode whose samples show every core busy most of the time.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field


def read_stat() -> tuple[int, int]:
    """(busy, total) jiffies of all cores since boot."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already in user
    return total - idle, total


@dataclass(frozen=True, slots=True)
class CpuUse:
    cores: int
    mean: float  # fraction of all cores, 0..1
    busy_share: float  # fraction of samples with >= 90 % of all cores busy
    busy_s: float = 0.0  # CPU seconds all cores spent busy meanwhile (anyone's)

    @property
    def saturated(self) -> bool:
        return self.mean >= 0.85 or self.busy_share >= 0.5


@dataclass(slots=True)
class CpuMeter:
    interval: float = 0.5
    _samples: list[float] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None
    _first: tuple[int, int] | None = None

    async def _loop(self) -> None:
        last = read_stat()
        while True:
            await asyncio.sleep(self.interval)
            now = read_stat()
            dt = now[1] - last[1]
            if dt > 0:
                self._samples.append((now[0] - last[0]) / dt)
            last = now

    def start(self) -> None:
        self._first = read_stat()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> CpuUse:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                # the sampler's own cancellation, unless the run itself is being stopped
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise
        end = read_stat()
        first = self._first or end
        total = end[1] - first[1]
        mean = (end[0] - first[0]) / total if total > 0 else 0.0
        busy = sum(1 for s in self._samples if s >= 0.9)
        share = busy / len(self._samples) if self._samples else 0.0
        busy_s = (end[0] - first[0]) / os.sysconf("SC_CLK_TCK")
        return CpuUse(cores=os.cpu_count() or 1, mean=mean, busy_share=share, busy_s=busy_s)
