"""Chunk hashes: a piece verified 64 KiB at a time, so that it can be passed on as it arrives.

A piece is trusted only against the root's word. With one hash per piece an agent must
hold the whole piece before it may pass any of it on, and every hop of a stripe tree
then delays each piece by that piece's time at the hop's share of the link: on
25 Mbit/s links with four stripe flows per downlink, 512 KiB pieces and trees three
hops deep, most of the gap between the root's last piece (22.5 s) and the nodes'
(28-29 s) at 16 nodes. The root therefore also publishes, with each piece hash, the
sha256 of every ``CHUNK`` bytes of the piece (the last chunk may be shorter); an agent
checks each chunk the moment it is in and lets its peer server stream the verified
prefix to the children waiting for the piece (``PieceStore.stage_piece(verified=True)``).
The piece hash stays what it was (sha256 of the piece), so stored pieces, restarts and
agents that never see chunk hashes are unchanged; a piece whose chunks all matched is
stored with the root's piece hash, without hashing it a second time.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

#: bytes per chunk hash: at 25 Mbit/s a fourth of the link moves one in 84 ms
CHUNK = 64 * 1024
DIGEST = 32


def chunk_count(length: int) -> int:
    return max(1, -(-length // CHUNK))


def chunk_digests(data: bytes | bytearray | memoryview) -> bytes:
    """The sha256 of every ``CHUNK`` bytes of ``data``, concatenated."""
    view = memoryview(data).cast("B")
    return b"".join(
        hashlib.sha256(view[at : at + CHUNK]).digest() for at in range(0, max(len(view), 1), CHUNK)
    )


class ChunkCheck:
    """Checks one piece's bytes against its chunk hashes as they arrive.

    The receiver ``attach``es the buffer the bytes land in, says how far it is filled
    (``arrived``) and, once the root's hashes are known (before the first byte or while
    the body arrives), ``know``s them. ``on_verified(n)`` is called whenever the
    verified prefix grows to ``n`` bytes, and once with -1 if a chunk does not match
    (nothing after it is checked: the piece then takes the whole-piece path, whose
    mismatch bans the parent).
    """

    __slots__ = ("bad", "buffer", "expected", "filled", "on_verified", "verified")

    def __init__(self, on_verified: Callable[[int], None]) -> None:
        self.on_verified = on_verified
        self.expected: bytes | None = None
        self.buffer: memoryview | None = None
        self.filled = 0
        self.verified = 0
        self.bad = False

    def __repr__(self) -> str:
        size = -1 if self.buffer is None else len(self.buffer)
        state = "bad" if self.bad else ("hashes known" if self.expected else "no hashes")
        return f"<ChunkCheck {self.verified}/{self.filled}/{size} bytes, {state}>"

    @property
    def complete(self) -> bool:
        return not self.bad and self.buffer is not None and self.verified == len(self.buffer)

    def attach(self, buffer: memoryview) -> None:
        self.buffer = buffer
        self._check()

    def arrived(self, filled: int) -> None:
        self.filled = filled
        self._check()

    def know(self, expected: bytes) -> None:
        if self.expected is None:
            self.expected = expected
            self._check()

    def _check(self) -> None:
        buf, expected = self.buffer, self.expected
        if self.bad or buf is None or expected is None:
            return
        end = len(buf)
        if len(expected) != DIGEST * chunk_count(end):
            self._fail()
            return
        start = at = self.verified
        while at < end:
            stop = min(at + CHUNK, end)
            if stop > self.filled:
                break
            k = at // CHUNK * DIGEST
            if hashlib.sha256(buf[at:stop]).digest() != expected[k : k + DIGEST]:
                self.verified = at
                self._fail()
                return
            at = stop
        self.verified = at
        if at > start:
            self.on_verified(at)

    def _fail(self) -> None:
        self.bad = True
        self.on_verified(-1)
