from __future__ import annotations

import asyncio

import pytest

from shoal.peer import Throttle, TokenBucket


def test_bucket_allows_burst_then_charges_debt() -> None:
    bucket = TokenBucket(rate=1000.0, burst=500.0, now=0.0)
    assert bucket.take(500, 0.0) == 0.0
    assert bucket.take(1000, 0.0) == pytest.approx(1.0)  # debt of 1000 at 1000 B/s
    assert bucket.take(100, 1.0) == pytest.approx(0.1)  # debt paid, 100 more
    assert bucket.take(0, 100.0) == 0.0  # refills, but only to the burst
    assert bucket.take(600, 100.0) == pytest.approx(0.1)


def test_bucket_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="positive"):
        TokenBucket(0, 1, 0)


async def test_throttle_paces_to_the_limit() -> None:
    throttle = Throttle(4)  # 4 MiB/s, burst 256 KiB
    loop = asyncio.get_running_loop()
    start = loop.time()
    for _ in range(5):
        await throttle.consume(256 * 1024)  # 1.25 MiB in all: ~0.25 s after the burst
    took = loop.time() - start
    assert 0.2 <= took < 1.5, took  # generous ceiling: the machine is shared
    assert "4 MB/s" in repr(throttle)
    unlimited = Throttle(0)
    await unlimited.consume(1 << 40)
    assert unlimited.waited_s == 0
