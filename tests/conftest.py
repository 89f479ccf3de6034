"""Fixtures shared by every test: real origin registries, agents, and a leak guard.

The leak guard fails any test that leaves a child process of the test runner behind
(and ends those processes, so one leak does not cascade into the next test).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from shoal.agent.service import Agent
from shoal.config import CacheConfig, Config, parse_config
from shoal.lab.image import BuiltImage, basic_authorization, build_image, push_image
from shoal.lab.origin import OriginRegistry


def _children() -> set[int]:
    pid = os.getpid()
    out: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            text = (task / "children").read_text()
        except OSError:
            continue
        out.update(int(p) for p in text.split())
    return out


@pytest.fixture(autouse=True)
def no_leaked_processes() -> Iterator[None]:
    before = _children()
    yield
    leaked = _children() - before
    for pid in leaked:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
    assert not leaked, f"test left child processes behind: {sorted(leaked)}"


@pytest.fixture(autouse=True, scope="session")
def no_default_cache_on_the_machine() -> Iterator[None]:
    """No test may leave shoal's default store (``CacheConfig.path``) on the machine:
    an agent started without a path writes to /dadi-p2p/cache."""
    default = Path(CacheConfig().path).parent
    existed = default.exists()
    yield
    assert existed or not default.exists(), f"a test created {default}: give it a CacheConfig.path"


def need_binary(*names: str) -> None:
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (make install installs it)")


@pytest.fixture
async def origin(tmp_path: Path) -> AsyncIterator[OriginRegistry]:
    need_binary("docker-registry")
    async with OriginRegistry(tmp_path / "origin") as reg:
        yield reg


@pytest.fixture
async def image(tmp_path: Path, origin: OriginRegistry) -> BuiltImage:
    """A three-layer image behind an index, pushed to ``origin``."""
    img = build_image(
        tmp_path / "image",
        repo="shoal/app",
        tag="v1",
        layer_sizes=[1 << 20, 3 << 20, 200_000],
        with_index=True,
    )
    await push_image(origin.url, img)
    return img


def agent_config(
    origin_address: str, cache: Path | None = None, **sections: dict[str, object]
) -> Config:
    """An agent on loopback with kernel-chosen ports; a relay unless given a ``cache``."""
    data: dict[str, object] = {
        "CacheConfig": {"path": str(cache) if cache else "", "capacity": 1 << 30},
        "ProxyConfig": {"port": 0, "listen": "127.0.0.1"},
        "ExporterConfig": {"port": 0},
        "UpstreamConfig": {
            "default": origin_address,
            "registries": [{"host": origin_address, "plainHTTP": True}],
        },
    }
    for key, value in sections.items():
        merged = dict(data.get(key, {}))  # type: ignore[call-overload]
        merged.update(value)
        data[key] = merged
    return parse_config(data)


@pytest.fixture
async def agent(origin: OriginRegistry) -> AsyncIterator[Agent]:
    async with Agent(agent_config(origin.address)) as a:
        yield a


@pytest.fixture
async def cached_agent(tmp_path: Path, origin: OriginRegistry) -> AsyncIterator[Agent]:
    async with Agent(agent_config(origin.address, cache=tmp_path / "agent-cache")) as a:
        yield a


USER, PASSWORD = "alice", "s3cret-pass"


@pytest.fixture
async def private_origin(tmp_path: Path) -> AsyncIterator[OriginRegistry]:
    need_binary("docker-registry", "htpasswd")
    htpasswd = tmp_path / "htpasswd"
    proc = await asyncio.create_subprocess_exec(
        "htpasswd", "-Bbc", str(htpasswd), USER, PASSWORD, stderr=asyncio.subprocess.DEVNULL
    )
    assert await proc.wait() == 0
    async with OriginRegistry(tmp_path / "private", htpasswd=htpasswd) as reg:
        yield reg


@pytest.fixture
async def private_image(tmp_path: Path, private_origin: OriginRegistry) -> BuiltImage:
    img = build_image(tmp_path / "pimg", repo="team/secret", tag="1", layer_sizes=[300_000])
    await push_image(private_origin.url, img, authorization=basic_authorization(USER, PASSWORD))
    return img
