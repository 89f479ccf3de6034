"""The default-store guard: what this run's processes try is refused and named."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from shoal.config import CacheConfig
from tests.guard.default_store import MARKS_ENV, refused


def test_an_agent_without_a_store_path_is_refused_and_named(tmp_path: Path) -> None:
    """A child ``shoal agent`` with every key at its default: refused at its mkdir."""
    marks = os.environ[MARKS_ENV]
    before = set(os.listdir(marks))
    code = asyncio.run(_agent_with_defaults(tmp_path))
    new = sorted(set(os.listdir(marks)) - before)
    assert code == 2  # one line: "shoal agent: /dadi-p2p/cache: a test may not create ..."
    assert new, "the child's mkdir was not seen"
    text = (Path(marks) / new[0]).read_text()
    assert text.startswith(CacheConfig().path)
    for name in new:  # this test expected it: do not fail it afterwards
        (Path(marks) / name).unlink()


async def _agent_with_defaults(tmp_path: Path) -> int:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "shoal", "agent", "--listen", "127.0.0.1",
        "--proxy-port", "0", "--exporter-port", "0",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    return await asyncio.wait_for(proc.wait(), 30)


def test_in_the_runner_too() -> None:
    with pytest.raises(PermissionError, match="default store"):
        Path(CacheConfig().path).mkdir(parents=True)
    marks = os.environ[MARKS_ENV]
    assert refused(marks)
    for name in os.listdir(marks):
        (Path(marks) / name).unlink()
