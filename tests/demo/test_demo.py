"""``shoal demo`` as a user runs it, small: it must finish, check digests and report."""

from __future__ import annotations

import asyncio
import sys

import pytest

from tests.conftest import need_binary

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


async def test_demo_runs_end_to_end_and_reads_the_origin_once_for_shoal() -> None:
    need_binary("docker-registry")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "shoal",
        "demo",
        "--nodes",
        "3",
        "--layers",
        "2",
        "--layer-mib",
        "2",
        "--origin-mib",
        "64",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin:/usr/sbin:/sbin"},
    )
    out, _ = await proc.communicate()
    text = out.decode()
    assert proc.returncode == 0, text[-2000:]
    lines = {line.split("│")[1].strip(): line for line in text.splitlines() if "│" in line}
    assert "ok" in lines["direct"]
    assert "ok" in lines["shoal"]
    direct_mib = float(lines["direct"].split("│")[5])
    shoal_mib = float(lines["shoal"].split("│")[5])
    assert direct_mib == pytest.approx(3 * shoal_mib, rel=0.01)
    assert "read the origin 1.00 times" in text


async def test_demo_refuses_nonsense_in_one_line() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "shoal",
        "demo",
        "--nodes",
        "0",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    assert proc.returncode == 2
    assert len(err.decode().strip().splitlines()) == 1
