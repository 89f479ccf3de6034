"""A shoal cluster of real processes on loopback: ``shoal root`` and N ``shoal agent``.

Each node is its own process started from its own config file, as in production, so a
test can kill one by PID mid-blob and watch the others cope. Ports are chosen free on
127.0.0.1; every node gets its own piece store under the work directory. The control
API runs over TLS with a CA the cluster makes for itself (``lab.certs``), as a real
cluster's does with the chart's.
"""

from __future__ import annotations

import asyncio
import secrets
import signal
import ssl
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp
import yaml

from shoal.errors import ShoalError
from shoal.lab.certs import ControlCerts, make_control_certs
from shoal.lab.ports import free_port
from shoal.lab.process import stop_process


class ClusterStartError(ShoalError):
    """A node of the local cluster did not come up."""


@dataclass
class Node:
    name: str
    role: str
    workdir: Path
    proxy_port: int
    p2p_port: int
    exporter_port: int
    proc: asyncio.subprocess.Process | None = None
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.workdir / f"{self.name}.log"

    @property
    def control(self) -> str:
        return f"127.0.0.1:{self.proxy_port}"

    @property
    def mirror(self) -> str:
        return f"127.0.0.1:{self.proxy_port}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def kill(self) -> None:
        """SIGKILL: no goodbye to anyone, as when a node dies."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()

    async def stop(self) -> None:
        if self.proc is not None:
            await stop_process(self.proc)


class LocalCluster:
    def __init__(
        self,
        workdir: Path,
        origin_address: str,
        *,
        agents: int,
        roots: int = 1,
        piece_size: int = 1 << 20,
        extra: dict[str, dict[str, Any]] | None = None,
        plain_http: bool = True,
    ) -> None:
        self.workdir = workdir
        self.origin = origin_address
        self.secret = secrets.token_hex(16)
        self.piece_size = piece_size
        self.extra = extra or {}
        self.plain_http = plain_http
        self.roots = [self._node(f"root{i}", "root") for i in range(roots)]
        self.agents = [self._node(f"agent{i}", "agent") for i in range(agents)]
        #: the control API's CA and the roots' certificate (made on entry)
        self.certs: ControlCerts | None = None

    def _node(self, name: str, role: str) -> Node:
        return Node(name, role, self.workdir, free_port(), free_port(), free_port())

    def config(self, node: Node) -> dict[str, Any]:
        cfg: dict[str, Any] = {
            "DeployConfig": {
                "mode": node.role,
                "logAudit": True,
                "logAuditMode": "file",
                "logDir": str(self.workdir / f"{node.name}-log"),
            },
            "ExporterConfig": {"enable": True, "port": node.exporter_port},
            "ProxyConfig": {
                "listen": "127.0.0.1",
                "port": node.proxy_port,
                # every agent reaches the root from 127.0.0.1: room for all of them
                "maxConnectionsPerClient": max(32, 16 * len(self.agents) + 32),
            },
            "P2PConfig": {
                "listen": "127.0.0.1",
                "advertise": "127.0.0.1",
                "p2pPort": node.p2p_port,
                "secret": self.secret,
                "roots": [r.control for r in self.roots] if node.role == "agent" else [],
            },
            "CacheConfig": {
                "path": str(self.workdir / f"{node.name}-cache"),
                "pieceSize": self.piece_size,
            },
            "UpstreamConfig": {
                "default": self.origin,
                "registries": [{"host": self.origin, "plainHTTP": self.plain_http}],
            },
            # TLS with a CA of our own, as a real cluster runs; every agent is on
            # 127.0.0.1, so the root must let that one address be all of them
            "ControlConfig": {
                **(self.certs.config() if self.certs else {"tls": False}),
                "peersPerSource": len(self.agents) + 8,
            },
        }
        for section, values in self.extra.items():
            cfg.setdefault(section, {}).update(values)
        return cfg

    async def __aenter__(self) -> LocalCluster:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.certs = make_control_certs(self.workdir / "control-tls", ["127.0.0.1", "localhost"])
        try:
            await asyncio.gather(*(self.start(n) for n in self.roots))
            await asyncio.gather(*(self.start(n) for n in self.agents))
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self, node: Node) -> None:
        path = self.workdir / f"{node.name}.yaml"
        path.write_text(yaml.safe_dump(self.config(node), sort_keys=False))
        with node.log.open("ab") as log:
            node.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "shoal",
                node.role,
                "--config",
                str(path),
                stdout=log,
                stderr=log,
                stdin=asyncio.subprocess.DEVNULL,
            )
        scheme = "https" if self.config(node)["ControlConfig"].get("tls") else "http"
        url = (
            f"{scheme}://{node.control}/healthz"
            if node.role == "root"
            else f"http://{node.mirror}/v2/"
        )
        tls = ssl.create_default_context(cafile=str(self.certs.ca_file)) if self.certs else None
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=tls or False)
        ) as session:
            for _ in range(1200):  # 60 s: a loaded 2-core machine starts Python slowly
                if node.proc.returncode is not None:
                    tail = node.log.read_text(errors="replace")[-600:]
                    raise ClusterStartError(f"{node.name} exited: {tail}")
                try:
                    async with session.get(url) as resp:
                        if resp.status in (200, 401):  # 401: a private origin's challenge
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)
        raise ClusterStartError(f"{node.name} did not come up")

    async def stop(self) -> None:
        await asyncio.gather(*(n.stop() for n in (*self.agents, *self.roots)))

    async def metrics(self, node: Node) -> str:
        url = f"http://127.0.0.1:{node.exporter_port}/metrics"
        async with aiohttp.ClientSession() as session, session.get(url) as r:
            return await r.text()
