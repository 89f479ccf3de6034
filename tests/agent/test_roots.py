"""The agent's start-up check of its roots, against a real root on loopback.

Each way a root list goes wrong in practice gets its own line and state: the roots'
peer port where their control port belongs (the chart's old mistake), another secret,
nothing listening, an agent listed as a root, a name that does not resolve. The agent's
``/readyz`` and ``shoal_root_reachable`` follow, and the heartbeat keeps them current.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from msgspec.structs import replace
from prometheus_client.parser import text_string_to_metric_families

from shoal.agent.roots import RootState, RootWatch, check_roots
from shoal.agent.service import Agent
from shoal.config import Config, parse_config
from shoal.errors import ConfigInvalidError
from shoal.lab.certs import make_control_certs
from shoal.lab.ports import free_port
from shoal.observability import Metrics
from shoal.root.service import Root

SECRET = "s" * 32


def control(tmp_path: Path, tls: bool = True) -> dict[str, object]:
    """``ControlConfig`` with this test's own cluster CA, as the chart provisions one."""
    directory = tmp_path / "control"
    if not (directory / "tls.key").exists():
        make_control_certs(directory, ["127.0.0.1"])
    return {
        "tls": tls,
        "caFile": str(directory / "ca.crt"),
        "certFile": str(directory / "tls.crt"),
        "keyFile": str(directory / "tls.key"),
    }


def root_config(tmp_path: Path, tls: bool = True) -> Config:
    return parse_config(
        {
            "DeployConfig": {"mode": "root"},
            "ProxyConfig": {"listen": "127.0.0.1", "port": 0},
            "P2PConfig": {"listen": "127.0.0.1", "p2pPort": 0, "secret": SECRET},
            "ExporterConfig": {"enable": False},
            "CacheConfig": {"path": str(tmp_path / "root-cache")},
            "ControlConfig": control(tmp_path, tls),
        }
    )


def agent_config(
    tmp_path: Path, roots: list[str], secret: str = SECRET, *, ca_dir: Path | None = None
) -> Config:
    return parse_config(
        {
            "ControlConfig": control(ca_dir or tmp_path),
            "ProxyConfig": {"listen": "127.0.0.1", "port": 0},
            "P2PConfig": {
                "listen": "127.0.0.1",
                "p2pPort": 0,
                "secret": secret,
                "roots": roots,
                "rootTimeout": 1,
            },
            "ExporterConfig": {"port": 0},
            "CacheConfig": {"path": str(tmp_path / f"agent-cache-{len(roots)}-{secret[:2]}")},
        }
    )


@pytest.fixture
async def root(tmp_path: Path) -> AsyncIterator[Root]:
    async with Root(root_config(tmp_path)) as r:
        yield r


async def check(cfg: Config, root: str) -> tuple[RootState, str]:
    async with RootWatch(cfg, cfg.p2p.secret.encode(), Metrics("n", "agent")) as watch:
        status = await watch.check(root)
    return status.state, status.problem


async def test_a_root_on_its_control_port_with_the_secret_is_usable(
    tmp_path: Path, root: Root
) -> None:
    addr = f"127.0.0.1:{root.control_port}"
    assert await check(agent_config(tmp_path, [addr]), addr) == (RootState.OK, "")


async def test_the_roots_peer_port_is_named_as_the_mistake(tmp_path: Path, root: Root) -> None:
    """What the chart used to render: the roots' P2PConfig.p2pPort in P2PConfig.roots."""
    addr = f"127.0.0.1:{root.peer_server.port}"
    cfg = agent_config(tmp_path, [addr])
    cfg = cfg.replace(p2p=replace(cfg.p2p, p2p_port=root.peer_server.port))  # same as the root's
    state, problem = await check(cfg, addr)
    assert state is RootState.WRONG_PORT
    assert "not a root's control API" in problem
    assert "the answer is not HTTP, as from a peer port" in problem
    assert "is the peer port (P2PConfig.p2pPort)" in problem and "ProxyConfig.port" in problem


async def test_another_secret_is_named(tmp_path: Path, root: Root) -> None:
    addr = f"127.0.0.1:{root.control_port}"
    state, problem = await check(agent_config(tmp_path, [addr], secret="t" * 32), addr)
    assert state is RootState.WRONG_SECRET
    assert "cluster secret differs" in problem


async def test_a_certificate_of_another_ca_is_wrong_tls(tmp_path: Path, root: Root) -> None:
    addr = f"127.0.0.1:{root.control_port}"
    state, problem = await check(agent_config(tmp_path, [addr], ca_dir=tmp_path / "other"), addr)
    assert state is RootState.WRONG_TLS
    assert "does not verify against ControlConfig.caFile" in problem


async def test_tls_on_one_side_only_is_named(tmp_path: Path) -> None:
    """A root left in the development mode, and an agent left in it: each says so."""
    async with Root(root_config(tmp_path, tls=False)) as plain:
        addr = f"127.0.0.1:{plain.control_port}"
        state, problem = await check(agent_config(tmp_path, [addr]), addr)
    assert state is RootState.WRONG_TLS
    assert "plain HTTP while this agent has ControlConfig.tls: true" in problem
    async with Root(root_config(tmp_path)) as tls:
        addr = f"127.0.0.1:{tls.control_port}"
        cfg = agent_config(tmp_path, [addr])
        cfg = cfg.replace(control=replace(cfg.control, tls=False))
        state, problem = await check(cfg, addr)
    assert state is RootState.WRONG_TLS
    assert "over TLS while this agent has ControlConfig.tls: false" in problem


async def test_nothing_listening_and_unknown_names_are_unreachable(tmp_path: Path) -> None:
    addr = f"127.0.0.1:{free_port()}"
    state, problem = await check(agent_config(tmp_path, [addr]), addr)
    assert state is RootState.UNREACHABLE and "connection refused" in problem
    name = "shoal-root-0.shoal-root.nowhere.invalid:65001"
    state, problem = await check(agent_config(tmp_path, [name]), name)
    assert state is RootState.UNREACHABLE and "does not resolve" in problem


async def test_an_agent_listed_as_a_root_is_the_wrong_port(tmp_path: Path) -> None:
    async with Agent(agent_config(tmp_path, [])) as other:
        addr = f"127.0.0.1:{other.proxy_port}"
        state, problem = await check(agent_config(tmp_path, [addr]), addr)
    assert state is RootState.WRONG_PORT
    assert "GET /healthz answered HTTP 200" in problem


@pytest.mark.parametrize(
    ("roots", "message"),
    [
        (["not a host"], "P2PConfig.roots[0]: 'not a host' is not host:port"),
        (["root-0:65001", "root-1"], "P2PConfig.roots[1]: 'root-1' is not host:port"),
        (["::1:65001"], "IPv6 address goes in brackets"),
        (["r:65001", "r:65001"], "r:65001 is listed twice"),
        (["r:0"], "'r:0' is not host:port"),
    ],
)
def test_a_root_list_the_agent_could_never_use_stops_it(roots: list[str], message: str) -> None:
    with pytest.raises(ConfigInvalidError) as info:
        check_roots(tuple(roots))
    assert message in info.value.message
    check_roots(("[::1]:65001", "shoal-root-0.shoal-root.ns.svc:65001"))


async def readyz(agent: Agent) -> tuple[int, str]:
    url = f"http://127.0.0.1:{agent.proxy_port}/readyz"
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        return r.status, await r.text()


async def families(agent: Agent) -> dict[str, dict[str, float]]:
    url = f"http://127.0.0.1:{agent.exporter_port}/metrics"
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        text = await r.text()
    out: dict[str, dict[str, float]] = {}
    for fam in text_string_to_metric_families(text):
        for sample in fam.samples:
            out.setdefault(sample.name, {})[sample.labels.get("root", "")] = sample.value
    return out


async def until(predicate: Callable[[], Awaitable[bool]], seconds: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not await predicate():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.1)


async def test_readiness_and_metrics_follow_the_roots(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="shoal.agent.roots")
    control, peer = free_port(), free_port()
    cfg = root_config(tmp_path)
    cfg = cfg.replace(proxy=replace(cfg.proxy, port=control), p2p=replace(cfg.p2p, p2p_port=peer))
    good, bad = f"127.0.0.1:{control}", f"127.0.0.1:{peer}"
    async with Agent(agent_config(tmp_path, [good])) as agent:
        assert agent.roots is not None
        await agent.roots.wait_checked()
        status, body = await readyz(agent)
        assert status == 503 and f"{good}: unreachable: cannot connect" in body
        fams = await families(agent)
        assert fams["shoal_root_reachable"] == {good: 0.0}
        assert fams["shoal_origin_fallback_total"] == {"": 0.0}  # there before any fallback
        healthz = f"http://127.0.0.1:{agent.proxy_port}/healthz"
        async with aiohttp.ClientSession() as s, s.get(healthz) as r:
            assert r.status == 200  # alive though not ready

        async with Root(cfg):  # the root comes up after the agent, as roots may

            async def ready() -> bool:
                return (await readyz(agent))[0] == 200

            await until(ready, 10)
            assert (await families(agent))["shoal_root_reachable"] == {good: 1.0}

        async def unready() -> bool:  # gone again: the heartbeat notices
            return (await readyz(agent))[0] == 503

        await until(unready, 10)
    async with Root(cfg), Agent(agent_config(tmp_path, [good, bad])) as agent:
        assert agent.roots is not None
        await agent.roots.wait_checked()
        status, body = await readyz(agent)
        assert status == 503 and "not ready: a root is misconfigured" in body
        assert f"{good}: ok" in body and f"{bad}: wrong-port" in body
    lines = [r.getMessage() for r in caplog.records if r.name == "shoal.agent.roots"]
    assert any(line.startswith(f"root {bad}: not a root's control API") for line in lines)
