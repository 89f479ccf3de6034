"""Deterministic test blobs, cut into pieces of ``PIECE`` bytes."""

from __future__ import annotations

import hashlib

PIECE = 16 * 1024


def make_blob(npieces: float, seed: int = 0) -> tuple[str, bytes]:
    """A blob of ``npieces`` pieces of ``PIECE`` bytes (fractional: short last piece)."""
    data = hashlib.shake_256(f"blob-{seed}".encode()).digest(int(npieces * PIECE))
    return "sha256:" + hashlib.sha256(data).hexdigest(), data


def pieces(data: bytes, size: int = PIECE) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()
