from __future__ import annotations

from shoal.peer.buffers import BufferPool


def test_buffers_are_reused_by_size_and_the_idle_set_is_bounded() -> None:
    pool = BufferPool(keep_bytes=16)
    a, b, c = pool.take(8), pool.take(8), pool.take(8)
    assert pool.allocated == 3
    for buf in (a, b, c):
        pool.give(buf)
    assert pool.take(8) is b and pool.take(8) is a  # the third was not kept
    assert pool.take(8) is not c and pool.allocated == 4
    assert len(pool.take(16)) == 16 and pool.allocated == 5
    assert "0 idle" in repr(pool)
