"""A full file system fails the piece, not the store: on a real, tiny tmpfs."""

from __future__ import annotations

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


async def test_disk_full_fails_the_piece_not_the_store(tiny_fs: Path) -> None:
    digest, data = make_blob(24)  # 384 KiB: cannot fit in 256 KiB
    parts = pieces(data)
    async with PieceStore(tiny_fs / "cache", capacity=1 << 30) as store:
        await store.create(digest, len(data), piece_size=PIECE)

        async def fill() -> int:
            for i, p in enumerate(parts):
                try:
                    await store.write_piece(digest, i, p)
                except DiskFullError:
                    return i
            return len(parts)

        written = await fill()
        assert 0 < written < len(parts)
        assert not store.has_piece(digest, written)
        assert store.used == written * PIECE
        # what landed is still served, and removing a blob makes room again
        assert await store.read_piece(digest, 0) == parts[0]
        other, small = make_blob(1, seed=3)

        async def add_other() -> None:
            await store.create(other, len(small), piece_size=PIECE)
            await store.write_piece(other, 0, small)

        with pytest.raises(DiskFullError):
            await add_other()
        await store.remove(digest)
        assert store.used == 0
        await add_other()
        await store.finish(other)
        assert await store.read_piece(other, 0) == small
