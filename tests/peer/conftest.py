from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from shoal.cache import PieceStore
from tests.cache.blobs import PIECE, make_blob, pieces

SECRET = b"peer tests secret"


def has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.fixture(autouse=True)
async def no_leaked_tasks() -> AsyncIterator[None]:
    yield
    for _ in range(3):
        await asyncio.sleep(0)
    me = asyncio.current_task()
    left = [t for t in asyncio.all_tasks() if t is not me and not t.done()]
    assert not left, f"tasks leaked: {left}"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[PieceStore]:
    async with PieceStore(tmp_path / "server-cache", capacity=1 << 30) as s:
        yield s


async def add_blob(
    store: PieceStore, npieces: float, seed: int = 0, skip: tuple[int, ...] = ()
) -> tuple[str, bytes]:
    digest, data = make_blob(npieces, seed)
    await store.create(digest, len(data), piece_size=PIECE)
    for i, p in enumerate(pieces(data)):
        if i not in skip:
            await store.write_piece(digest, i, p)
    return digest, data
