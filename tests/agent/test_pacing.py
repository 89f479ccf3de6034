"""Preheat pacing alone: the token bucket's bookings, and a gate that lets pulls first."""

from __future__ import annotations

import asyncio

import pytest

from shoal.agent.pacing import BURST_S, MAX_HOLD, MIB, PreheatGate, TokenBucket
from shoal.observability import Metrics


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_bookings_are_spaced_by_size_over_rate_after_a_short_burst() -> None:
    clock = Clock()
    bucket = TokenBucket(1 * MIB, clock=clock)
    # 1 MiB/s: 256 KiB reads; the first BURST_S seconds' worth go at once
    waits = [bucket.delay(256 << 10) for _ in range(5)]
    assert waits == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])
    bucket.refund(256 << 10)  # a cancelled read gives its slot back
    assert bucket.delay(256 << 10) == pytest.approx(1.0)
    clock.now += 10  # idle: the burst again, no more
    assert bucket.delay(256 << 10) == pytest.approx(0.0)
    assert bucket.delay(1 * MIB) == pytest.approx(1.25 - BURST_S)
    assert TokenBucket(0, clock=clock).delay(1 << 30) == 0.0  # no limit


class Swarm:
    def __init__(self) -> None:
        self.preheat_only: set[str] = {"sha256:p"}
        self.live = 0

    @property
    def live_downloads(self) -> int:
        return self.live


def test_job_rates_go_under_the_nodes_cap() -> None:
    gate = PreheatGate(Swarm(), Metrics("n", "agent"), rate_mb=20, yield_to_pulls=True)
    assert gate.bucket.rate == 20 * MIB
    gate.set_job_rates([5, 0])
    assert gate.bucket.rate == 5 * MIB
    gate.set_job_rates([50])
    assert gate.bucket.rate == 20 * MIB  # a job cannot lift the node's own cap
    free = PreheatGate(Swarm(), Metrics("n", "agent"), rate_mb=0, yield_to_pulls=True)
    free.set_job_rates([])
    assert free.bucket.rate == 0


async def test_reads_wait_behind_pulls_but_not_forever_and_not_once_a_pull_wants_them() -> None:
    swarm = Swarm()
    gate = PreheatGate(swarm, Metrics("n", "agent"), rate_mb=0, yield_to_pulls=True)
    assert gate.paced("sha256:p") and not gate.paced("sha256:other")
    swarm.live = 1
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    waiting = asyncio.create_task(gate.admit("sha256:p", 1 << 20))
    await asyncio.sleep(0.3)
    assert not waiting.done()  # a pull downloads: the preheat read waits
    swarm.live = 0
    await asyncio.wait_for(waiting, 1)
    assert 0.3 <= loop.time() - t0 < 1.0 and gate.held == 1
    swarm.live = 1
    waiting = asyncio.create_task(gate.admit("sha256:p", 1 << 20))
    await asyncio.sleep(0.1)
    swarm.preheat_only.clear()  # a pull asked for this very blob: it goes now
    await asyncio.wait_for(waiting, 1)
    assert MAX_HOLD >= 5  # and a read is never held longer than that
