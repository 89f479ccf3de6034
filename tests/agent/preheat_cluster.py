"""A root and a few agents in this process, on loopback, with the control API over TLS
and an operator credential: what the preheat tests run against. The origin is the
real ``docker-registry``; everything else is shoal's own code, unmocked."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shoal.agent.service import Agent
from shoal.config import parse_config
from shoal.control.preheat import JobSpec, JobState
from shoal.control.preheat_client import PreheatClient
from shoal.lab.certs import ControlCerts, make_control_certs
from shoal.root.service import Root

SECRET = "cluster-secret-0123456789abcdef"
OPERATOR = "operator-credential-0123456789ab"


@dataclass
class PreheatCluster:
    root: Root
    agents: list[Agent]
    client: PreheatClient
    certs: ControlCerts

    async def start(self, spec: JobSpec) -> JobState:
        return await self.client.create(spec)

    async def settled(self, *, limit: float = 15.0) -> None:
        """Until the root has heard from every agent (their first heartbeat polls)."""
        async with asyncio.timeout(limit):
            while len(self.root.preheat.book.present(time.time())) < len(self.agents):  # noqa: ASYNC110
                await asyncio.sleep(0.1)

    async def wait(self, job_id: str, *, limit: float = 60.0) -> JobState:
        """The job once it is done, failed, cancelled or expired."""
        async with asyncio.timeout(limit):
            while True:
                state = await self.client.get(job_id)
                if state.state not in ("running", "resolving"):
                    return state
                await asyncio.sleep(0.1)


def _merge(base: dict[str, Any], extra: dict[str, dict[str, Any]]) -> dict[str, Any]:
    for key, value in extra.items():
        base.setdefault(key, {}).update(value)
    return base


@contextlib.asynccontextmanager
async def preheat_cluster(
    tmp_path: Path,
    origin: str,
    *,
    agents: int = 3,
    root_extra: dict[str, dict[str, Any]] | None = None,
    agent_extra: dict[str, dict[str, Any]] | None = None,
    operator: str = OPERATOR,
    addresses: list[str] | None = None,
) -> AsyncIterator[PreheatCluster]:
    """``addresses``: each agent's own loopback address (127.0.0.N), as nodes with IPs
    of their own; by default all share 127.0.0.1."""
    certs = make_control_certs(tmp_path / "control", ["127.0.0.1"])
    upstream = {"default": origin, "registries": [{"host": origin, "plainHTTP": True}]}
    control = {**certs.config(), "peersPerSource": agents + 8}
    root_cfg = _merge(
        {
            "DeployConfig": {"mode": "root"},
            "ProxyConfig": {"listen": "127.0.0.1", "port": 0},
            "P2PConfig": {"listen": "127.0.0.1", "p2pPort": 0, "secret": SECRET},
            "ExporterConfig": {"port": 0},
            "CacheConfig": {"path": str(tmp_path / "root-cache"), "pieceSize": 256 << 10},
            "UpstreamConfig": upstream,
            "ControlConfig": control,
            "PreheatConfig": {"secret": operator},
        },
        root_extra or {},
    )
    async with contextlib.AsyncExitStack() as stack:
        root = await stack.enter_async_context(Root(parse_config(root_cfg)))
        roots = [f"127.0.0.1:{root.control_port}"]
        started = []
        for i in range(agents):
            address = addresses[i] if addresses else "127.0.0.1"
            cfg = _merge(
                {
                    "DeployConfig": {"nodeName": f"node-{i}"},
                    "ProxyConfig": {"listen": address, "port": 0},
                    "P2PConfig": {
                        "listen": address,
                        "advertise": address,
                        "p2pPort": 0,
                        "secret": SECRET,
                        "roots": roots,
                    },
                    "ExporterConfig": {"port": 0},
                    "CacheConfig": {"path": str(tmp_path / f"agent{i}-cache")},
                    "UpstreamConfig": upstream,
                    "ControlConfig": certs.config(),
                },
                agent_extra or {},
            )
            started.append(await stack.enter_async_context(Agent(parse_config(cfg))))
        client = await stack.enter_async_context(
            PreheatClient(roots, operator.encode(), control=parse_config(root_cfg).control)
        )
        cluster = PreheatCluster(root, started, client, certs)
        await cluster.settled()
        yield cluster
