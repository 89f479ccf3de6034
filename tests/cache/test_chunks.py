"""Chunk hashes: a piece checked 64 KiB at a time as its bytes land."""

from __future__ import annotations

import hashlib

from shoal.cache.chunks import CHUNK, ChunkCheck, chunk_count, chunk_digests


def piece(n: int) -> bytes:
    return hashlib.shake_256(b"piece").digest(n)


def test_one_hash_per_chunk_the_last_may_be_short() -> None:
    data = piece(2 * CHUNK + 5)
    digests = chunk_digests(data)
    assert chunk_count(len(data)) == 3 and len(digests) == 3 * 32
    assert digests[64:] == hashlib.sha256(data[2 * CHUNK :]).digest()
    assert len(chunk_digests(b"")) == 32 and chunk_count(0) == 1


def test_bytes_are_vouched_for_chunk_by_chunk_and_hashes_may_come_late() -> None:
    data = piece(3 * CHUNK)
    seen: list[int] = []
    check = ChunkCheck(seen.append)
    buf = memoryview(bytearray(len(data)))
    check.attach(buf)
    buf[: CHUNK + 10] = data[: CHUNK + 10]
    check.arrived(CHUNK + 10)
    assert seen == [] and check.verified == 0  # no hashes yet: nothing vouched for
    check.know(chunk_digests(data))
    assert seen == [CHUNK]  # a chunk is vouched for only once it is all in
    buf[CHUNK + 10 :] = data[CHUNK + 10 :]
    check.arrived(len(data))
    assert seen == [CHUNK, len(data)] and check.complete


def test_a_chunk_that_does_not_match_stops_the_check_at_its_start() -> None:
    data = piece(3 * CHUNK)
    seen: list[int] = []
    check = ChunkCheck(seen.append)
    check.know(chunk_digests(data))
    buf = memoryview(bytearray(data))
    buf[CHUNK + 1] ^= 0xFF
    check.attach(buf)
    check.arrived(len(data))
    assert seen == [-1] and check.verified == CHUNK and check.bad and not check.complete
    check.arrived(len(data))
    assert seen == [-1]  # said once, and nothing after it is ever vouched for


def test_hashes_for_another_length_vouch_for_nothing() -> None:
    seen: list[int] = []
    check = ChunkCheck(seen.append)
    check.know(chunk_digests(piece(CHUNK)))
    data = piece(2 * CHUNK)
    check.attach(memoryview(bytearray(data)))
    check.arrived(len(data))
    assert seen == [-1] and check.verified == 0
