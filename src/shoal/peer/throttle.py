"""The downstream limit (``throttleLimitMB``): a token bucket shared by all uploads.

The bucket is a pure object with time passed in (so tests drive it with a fake clock);
``Throttle`` is the asyncio shell that sleeps for the delay the bucket asks for. The
bucket lets its level go negative (debt) so a piece larger than the burst is sent
whole and paid for afterwards by whoever comes next: the long-run rate is exact, and no
piece is ever split just to fit the bucket.
"""

from __future__ import annotations

import asyncio

MB = 1 << 20


class TokenBucket:
    __slots__ = ("_level", "_stamp", "burst", "rate")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if rate <= 0 or burst <= 0:
            raise ValueError("rate and burst must be positive")
        self.rate = rate
        self.burst = burst
        self._level = burst
        self._stamp = now

    def take(self, nbytes: int, now: float) -> float:
        """Spend ``nbytes``; return the seconds to wait before sending them."""
        if now > self._stamp:
            self._level = min(self.burst, self._level + (now - self._stamp) * self.rate)
            self._stamp = now
        self._level -= nbytes
        return 0.0 if self._level >= 0 else -self._level / self.rate

    def __repr__(self) -> str:
        return f"<TokenBucket rate={self.rate:.0f}B/s level={self._level:.0f}/{self.burst:.0f}>"


class Throttle:
    """``limit_mb`` MB/s (1 MB = 2**20 bytes) for everything sent through it; 0 = none."""

    def __init__(self, limit_mb: float, *, burst_s: float = 0.05) -> None:
        self.limit_mb = limit_mb
        self._burst_s = burst_s
        self._bucket: TokenBucket | None = None
        self.waited_s = 0.0

    async def consume(self, nbytes: int) -> None:
        if self.limit_mb <= 0:
            return
        now = asyncio.get_running_loop().time()
        if self._bucket is None:
            rate = self.limit_mb * MB
            self._bucket = TokenBucket(rate, max(rate * self._burst_s, 256 * 1024), now)
        delay = self._bucket.take(nbytes, now)
        if delay > 0:
            self.waited_s += delay
            await asyncio.sleep(delay)

    def __repr__(self) -> str:
        limit = f"{self.limit_mb} MB/s" if self.limit_mb > 0 else "unlimited"
        return f"<Throttle {limit} waited={self.waited_s:.3f}s>"
