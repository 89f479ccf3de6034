"""The origin registry: Debian's ``docker-registry`` (CNCF distribution 2.8), for real.

Started on loopback (or inside a network namespace) with filesystem storage in a
directory of its own and JSON logs, which carry one ``response completed`` entry per
request with ``http.response.written``: that is how the demo, the benchmarks and the
tests count the bytes that left the origin, from the origin's own mouth.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp
import yaml

from shoal.errors import ShoalError
from shoal.lab.ports import free_port
from shoal.lab.process import stop_process

REGISTRY_BINARY = "docker-registry"


class OriginUnavailableError(ShoalError):
    """The origin registry binary is missing or did not come up."""


@dataclass(frozen=True, slots=True)
class ServedRequest:
    method: str
    uri: str
    status: int
    written: int


class OriginRegistry:
    """``async with OriginRegistry(workdir) as origin:`` runs a registry until the block ends."""

    def __init__(
        self,
        workdir: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        htpasswd: Path | None = None,
        proxy_remote: str | None = None,
        netns: str | None = None,
        tls: tuple[Path, Path] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.workdir = workdir
        self.host = host
        self.port = port or free_port(host)
        self.htpasswd = htpasswd
        self.proxy_remote = proxy_remote
        self.netns = netns
        self.tls = tls
        self.extra = extra or {}
        self.log_path = workdir / "registry.log"
        self._proc: asyncio.subprocess.Process | None = None
        self._log_file: Any = None

    @property
    def address(self) -> str:
        """``host:port`` as it appears in image references."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.address}"

    def config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = {
            "version": 0.1,
            "log": {"level": "info", "formatter": "json", "accesslog": {"disabled": True}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.workdir / "storage")},
                "delete": {"enabled": True},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": {"addr": self.address, "secret": "shoal-lab"},
        }
        if self.tls is not None:
            cfg["http"]["tls"] = {"certificate": str(self.tls[0]), "key": str(self.tls[1])}
        if self.htpasswd is not None:
            cfg["auth"] = {"htpasswd": {"realm": "shoal-lab", "path": str(self.htpasswd)}}
        if self.proxy_remote is not None:
            cfg["proxy"] = {"remoteurl": self.proxy_remote}
        cfg.update(self.extra)
        return cfg

    async def __aenter__(self) -> OriginRegistry:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self, wait_s: float = 20.0) -> None:
        binary = shutil.which(REGISTRY_BINARY)
        if binary is None:
            raise OriginUnavailableError(
                f"{REGISTRY_BINARY} not found: install Debian's docker-registry (make install)"
            )
        self.workdir.mkdir(parents=True, exist_ok=True)
        cfg_path = self.workdir / "config.yml"
        cfg_path.write_text(yaml.safe_dump(self.config()))
        argv: Sequence[str] = [binary, "serve", str(cfg_path)]
        if self.netns:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        self._log_file = self.log_path.open("ab")
        self._proc = await asyncio.create_subprocess_exec(
            *argv, stdout=self._log_file, stderr=self._log_file, stdin=asyncio.subprocess.DEVNULL
        )
        if self.netns:
            return  # the caller checks reachability from inside its namespaces
        deadline = asyncio.get_running_loop().time() + wait_s
        # readiness only: any answer will do, so the test CA need not be trusted here
        connector = aiohttp.TCPConnector(ssl=False)
        async with aiohttp.ClientSession(connector=connector) as session:
            while True:
                if self._proc.returncode is not None:
                    raise OriginUnavailableError(
                        f"{REGISTRY_BINARY} exited with {self._proc.returncode}: "
                        f"{self._last_log_line()}"
                    )
                try:
                    async with session.get(f"{self.url}/v2/") as resp:
                        if resp.status in (200, 401):
                            return
                except aiohttp.ClientError:
                    pass
                if asyncio.get_running_loop().time() > deadline:
                    await self.stop()
                    raise OriginUnavailableError(f"{REGISTRY_BINARY} did not answer in {wait_s}s")
                await asyncio.sleep(0.05)

    async def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            await stop_process(proc)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def _last_log_line(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return lines[-1][:300] if lines else ""

    def served(self) -> list[ServedRequest]:
        """Every request the registry answered, from its own log."""
        out: list[ServedRequest] = []
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return out
        for line in text.splitlines():
            if '"response completed"' not in line:
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            out.append(
                ServedRequest(
                    method=str(entry.get("http.request.method", "")),
                    uri=str(entry.get("http.request.uri", "")),
                    status=int(entry.get("http.response.status", 0)),
                    written=int(entry.get("http.response.written", 0)),
                )
            )
        return out

    def blob_bytes_served(self) -> int:
        """Bytes of blob bodies the registry sent (GET ``/v2/<name>/blobs/...``)."""
        return sum(r.written for r in self.served() if r.method == "GET" and "/blobs/" in r.uri)

    def blob_gets(self, digest: str) -> int:
        """How many complete-or-partial GETs of one blob the registry answered with bytes."""
        return sum(
            1
            for r in self.served()
            if r.method == "GET" and r.uri.split("?")[0].endswith(f"/blobs/{digest}") and r.written
        )
