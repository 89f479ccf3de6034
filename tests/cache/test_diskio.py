from __future__ import annotations

import os
from pathlib import Path

import pytest

from shoal.cache import aligned_buffer
from shoal.cache.buffers import ALIGN
from shoal.cache.diskio import open_direct, write_buffered, write_direct


@pytest.mark.parametrize("kind", ["aligned", "bytes", "offset-view"])
def test_direct_writes_land_whole_with_unaligned_tail(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "data"
    size = 5 * ALIGN + 123
    payload = os.urandom(size)
    path.write_bytes(b"")
    os.truncate(path, 2 * ALIGN + size)
    fd = os.open(path, os.O_RDWR)
    direct = open_direct(path)
    try:
        if direct < 0:
            pytest.skip("no O_DIRECT on this file system")
        if kind == "aligned":
            src: bytes | memoryview = aligned_buffer(size)
            src[:] = payload  # type: ignore[index]
        elif kind == "bytes":
            src = payload
        else:  # writable but not page-aligned: goes through the scratch buffer
            backing = bytearray(size + 1)
            backing[1:] = payload
            src = memoryview(backing)[1:]
        write_direct(fd, direct, 2 * ALIGN, src)
        assert os.pread(fd, size, 2 * ALIGN) == payload
    finally:
        os.close(fd)
        if direct >= 0:
            os.close(direct)


def test_unaligned_offset_and_no_direct_fd_fall_back_to_buffered(tmp_path: Path) -> None:
    path = tmp_path / "data"
    path.write_bytes(bytes(4 * ALIGN))
    fd = os.open(path, os.O_RDWR)
    try:
        write_direct(fd, -1, 10, b"abc")
        direct = open_direct(path)
        write_direct(fd, direct, ALIGN + 1, b"xyz" * 2000)
        if direct >= 0:
            os.close(direct)
        write_buffered(fd, 3 * ALIGN, b"q")
        data = path.read_bytes()
        assert data[10:13] == b"abc" and data[ALIGN + 1 : ALIGN + 6001] == b"xyz" * 2000
        assert data[3 * ALIGN] == ord("q")
    finally:
        os.close(fd)
