"""A full file system fails the piece, not the store: on a real, tiny tmpfs."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.cache import DiskFullError, PieceStore
from tests.cache.blobs import PIECE, make_blob, pieces


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount tmpfs: {done.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


async def test_a_blob_that_cannot_fit_on_the_disk_is_refused_before_it_is_fetched(
    tiny_fs: Path,
) -> None:
    digest, data = make_blob(24)  # 384 KiB: cannot fit in 256 KiB
    async with PieceStore(tiny_fs / "cache", capacity=1 << 30) as store:
        with pytest.raises(DiskFullError):
            await store.create(digest, len(data), piece_size=PIECE)
        assert store.lookup(digest) is None
        assert not list((tiny_fs / "cache").rglob("data"))
        small, sdata = make_blob(2, seed=3)  # the store goes on serving what fits
        await store.create(small, len(sdata), piece_size=PIECE)
        for i, p in enumerate(pieces(sdata)):
            await store.write_piece(small, i, p)
        await store.finish(small)
        assert await store.read_piece(small, 1) == pieces(sdata)[1]


async def test_a_disk_filled_by_someone_else_evicts_idle_blobs_then_fails_the_piece(
    tiny_fs: Path,
) -> None:
    """ENOSPC at a write: idle blobs go and the write is tried again; with nothing left
    to evict the piece fails with ``DiskFullError`` at once, and whoever waits for it
    is told, not left waiting."""
    old, odata = make_blob(4, seed=1)
    new, ndata = make_blob(4, seed=2)
    parts = pieces(ndata)
    async with PieceStore(tiny_fs / "cache", capacity=1 << 30) as store:
        await store.create(old, len(odata), piece_size=PIECE)
        for i, p in enumerate(pieces(odata)):
            await store.write_piece(old, i, p)
        await store.finish(old)
        await store.create(new, len(ndata), piece_size=PIECE)
        await store.write_piece(new, 0, parts[0])
        fill(tiny_fs / "filler1")  # another program takes what is left
        await store.write_piece(new, 1, parts[1])
        assert store.lookup(old) is None, "the idle blob made room"
        fill(tiny_fs / "filler2")  # and takes that too
        with store.lease(new):
            waiter = asyncio.ensure_future(store.wait_piece(new, 2))
            await asyncio.sleep(0)  # it waits now
            with pytest.raises(DiskFullError):
                await store.write_piece(new, 2, parts[2])
            async with asyncio.timeout(1):
                with pytest.raises(DiskFullError):
                    await waiter
        for name in ("filler1", "filler2"):
            (tiny_fs / name).unlink()
        for i in (2, 3):
            await store.write_piece(new, i, parts[i])
        await store.finish(new)
        assert await store.read_range(new, 0, len(ndata)) == ndata


def fill(path: Path) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        with contextlib.suppress(OSError):
            while os.write(fd, b"x" * 4096):
                pass
    finally:
        os.close(fd)
