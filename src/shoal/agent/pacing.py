"""Preheat reads are paced, so a preheat never takes a link from a pull.

A preheat is traffic nobody waits for, so it gives way twice:

1. **Its own rate.** Piece reads of a blob only a preheat wants (no pull of the node's
   runtime has asked for it) take their bytes from a token bucket first
   (``TokenBucket``, GCRA: each read books its slot in the order it came, so the
   parents of a blob are served in turn and none waits for long). The rate is the
   node's ``PreheatConfig.rateLimitMB`` or a job's lower ``rate``.
2. **Pulls first.** While a pull downloads through the swarm on this node
   (``yieldToPulls``), a preheat read waits before it is sent, at most ``MAX_HOLD``
   seconds each: a read held longer would make its parent look silent to the picker,
   which would report it and have the stripe moved for nothing.

A blob a pull asks for while a preheat fetches it stops being paced at once (the
swarm provider forgets it as preheat-only), so a rollout that starts mid-preheat is
never slowed by its own preheat's limit on its node.

The reads are paced *before* they are sent, in ``PacedPeerClient.read``: the download
machine (``shoal.swarm.download``) is the same for both, it only sees a parent that
starts its pieces a little later, and its stall clock starts with the first byte.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol

from shoal.cache.chunks import ChunkCheck
from shoal.observability import Metrics
from shoal.peer.buffers import BufferPool
from shoal.peer.client import Address, PeerClient

#: seconds a preheat read waits behind pulls at most (the picker's silence rule pings a
#: parent after 4 mean piece times, and a queued read times out after 30 s of nothing)
MAX_HOLD = 5.0
#: seconds between looks at whether the pulls are done
HOLD_STEP = 0.05
#: seconds of traffic a bucket may send at once after being idle
BURST_S = 0.25
MIB = 1 << 20

BYTES_METRIC = "shoal_preheat_bytes_total"
BYTES_HELP = "Bytes of pieces this agent fetched for preheat jobs (paced)"
WAIT_METRIC = "shoal_preheat_wait_seconds_total"
WAIT_HELP = "Seconds preheat reads waited: on their rate limit, or behind pulls"


class TokenBucket:
    """Bytes per second with a short burst; ``take`` books a slot in call order (GCRA:
    the theoretical arrival time moves on by ``n / rate`` per booking)."""

    def __init__(self, rate: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self._clock = clock
        self._tat = 0.0

    def __repr__(self) -> str:
        ahead = max(self._tat - self._clock(), 0.0)
        return f"<TokenBucket {self.rate / MIB:.1f} MiB/s [{ahead:.2f} s booked]>"

    def delay(self, nbytes: int) -> float:
        """Book ``nbytes``: seconds to wait before sending them (0 when unlimited)."""
        if self.rate <= 0:
            return 0.0
        now = self._clock()
        self._tat = max(self._tat, now) + nbytes / self.rate
        return max(self._tat - now - BURST_S, 0.0)

    def refund(self, nbytes: int) -> None:
        """A booking that was not used (its read was cancelled while waiting)."""
        if self.rate > 0:
            self._tat -= nbytes / self.rate

    async def take(self, nbytes: int) -> float:
        wait = self.delay(nbytes)
        if wait > 0:
            try:
                await asyncio.sleep(wait)
            except asyncio.CancelledError:
                self.refund(nbytes)
                raise
        return wait


class PaceHost(Protocol):
    """What the gate needs of the agent's swarm (``swarm.SwarmProvider``)."""

    #: blobs only preheat jobs want (no pull has asked)
    preheat_only: set[str]

    @property
    def live_downloads(self) -> int:
        """Downloads a pull is waiting for."""
        ...


class PreheatGate:
    """Decides per read: pass, or wait for the rate and for pulls first."""

    def __init__(
        self,
        swarm: PaceHost,
        metrics: Metrics,
        *,
        rate_mb: float,
        yield_to_pulls: bool,
    ) -> None:
        self.swarm = swarm
        self.metrics = metrics
        self.node_rate = rate_mb * MIB
        self.yield_to_pulls = yield_to_pulls
        self.bucket = TokenBucket(self.node_rate)
        self.waited = 0.0
        self.held = 0  # reads held behind pulls, since start
        metrics.inc(BYTES_METRIC, BYTES_HELP, 0.0)
        metrics.inc(WAIT_METRIC, WAIT_HELP, 0.0)

    def __repr__(self) -> str:
        return f"<PreheatGate {self.bucket!r} [{self.held} held behind pulls]>"

    def set_job_rates(self, rates: list[float]) -> None:
        """The lowest rate (MB/s) any running job asks for, under the node's own cap."""
        asked = [r * MIB for r in rates if r > 0]
        caps = [c for c in (self.node_rate, *asked) if c > 0]
        self.bucket.rate = min(caps) if caps else 0.0

    def paced(self, digest: str) -> bool:
        return digest in self.swarm.preheat_only

    async def admit(self, digest: str, nbytes: int) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        if self.yield_to_pulls and self.swarm.live_downloads:
            self.held += 1
            while self.swarm.live_downloads and loop.time() - start < MAX_HOLD:
                await asyncio.sleep(HOLD_STEP)
                if not self.paced(digest):
                    return  # a pull wants this blob now: it goes at once
        await self.bucket.take(nbytes)
        waited = loop.time() - start
        if waited > 0:
            self.waited += waited
            self.metrics.inc(WAIT_METRIC, WAIT_HELP, waited)

    def fetched(self, nbytes: int) -> None:
        self.metrics.inc(BYTES_METRIC, BYTES_HELP, float(nbytes))


class PacedPeerClient(PeerClient):
    """The agent's peer client; reads of preheat-only blobs go through ``gate`` first."""

    gate: PreheatGate | None = None

    async def read(
        self,
        peer: str | Address,
        digest: str,
        offset: int,
        length: int,
        *,
        into: memoryview | bytearray | None = None,
        pool: BufferPool | None = None,
        sha256: bytes | None = None,
        on_start: Callable[[], None] | None = None,
        check: ChunkCheck | None = None,
    ) -> memoryview:
        gate = self.gate
        paced = gate is not None and gate.paced(digest)
        if gate is not None and paced:
            await gate.admit(digest, length)
        data = await super().read(
            peer,
            digest,
            offset,
            length,
            into=into,
            pool=pool,
            sha256=sha256,
            on_start=on_start,
            check=check,
        )
        if gate is not None and paced:
            gate.fetched(length)
        return data
