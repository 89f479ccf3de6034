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
from tests.guard.default_store import MARKS_ENV, ROOT_ENV, install, refused


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


GUARD_DIR = Path(__file__).parent / "guard"


@pytest.fixture(autouse=True, scope="session")
def default_store_guard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Nothing this run starts may create shoal's default store (the parent of
    ``CacheConfig.path``, /dadi-p2p): see ``tests/guard/default_store.py``."""
    marks = str(tmp_path_factory.mktemp("default-store-guard"))
    root = str(Path(CacheConfig().path).parent)
    saved = {k: os.environ.get(k) for k in (ROOT_ENV, MARKS_ENV, "PYTHONPATH")}
    os.environ[ROOT_ENV], os.environ[MARKS_ENV] = root, marks
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(GUARD_DIR), saved["PYTHONPATH"]) if p
    )
    install(root, marks)
    yield marks
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(autouse=True)
def no_default_store(default_store_guard: str) -> Iterator[None]:
    yield
    tried = refused(default_store_guard)
    for mark in Path(default_store_guard).iterdir():
        mark.unlink()
    assert not tried, f"tried to create shoal's default store: {tried}; give it a CacheConfig.path"


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
