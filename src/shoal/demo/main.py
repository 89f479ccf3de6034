"""``shoal demo``: a real origin registry, a real agent process, one image pulled through it.

Everything is real and local: Debian's docker-registry on loopback holding a generated
multi-layer image, ``shoal agent`` started as its own process from a config file, and
the image pulled through the agent's mirror. The bytes that left the origin are read
from the origin's own log, so the figure does not depend on shoal reporting honestly.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import shutil
import sys
import tempfile
from pathlib import Path

import aiohttp
import yaml
from rich.console import Console
from rich.table import Table

from shoal.errors import ShoalError
from shoal.lab.image import build_image, oci_layout_blob, push_image
from shoal.lab.origin import OriginRegistry
from shoal.lab.ports import free_port
from shoal.registry.pull import make_progress, pull_image

MiB = 1 << 20


class DemoFailedError(ShoalError):
    """A step of the demo did not do what it should."""


def run_demo(args: argparse.Namespace) -> int:
    if args.layers < 1 or args.layer_mib < 1:
        raise DemoFailedError("--layers and --layer-mib must be at least 1")
    console = Console()
    if args.workdir:
        workdir = Path(args.workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        asyncio.run(_demo(console, workdir, args.layers, args.layer_mib))
    else:
        with tempfile.TemporaryDirectory(prefix="shoal-demo-") as tmp:
            asyncio.run(_demo(console, Path(tmp), args.layers, args.layer_mib))
    return 0


async def _start_agent(
    workdir: Path, origin: OriginRegistry
) -> tuple[asyncio.subprocess.Process, int, int]:
    proxy_port, exporter_port = free_port(), free_port()
    config = {
        "DeployConfig": {
            "mode": "agent",
            "logAudit": True,
            "logAuditMode": "file",
            "logDir": str(workdir / "agent-log"),
        },
        "ExporterConfig": {"enable": True, "port": exporter_port},
        "ProxyConfig": {"listen": "127.0.0.1", "port": proxy_port},
        "CacheConfig": {"path": str(workdir / "agent-cache")},
        "UpstreamConfig": {
            "default": origin.address,
            "registries": [{"host": origin.address, "plainHTTP": True}],
        },
    }
    cfg_path = workdir / "agent.yaml"
    cfg_path.write_text(yaml.safe_dump(config, sort_keys=False))
    log = (workdir / "agent.log").open("ab")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "shoal",
        "agent",
        "--config",
        str(cfg_path),
        stdout=log,
        stderr=log,
        stdin=asyncio.subprocess.DEVNULL,
    )
    log.close()
    async with aiohttp.ClientSession() as session:
        for _ in range(200):
            if proc.returncode is not None:
                tail = (workdir / "agent.log").read_text(errors="replace")[-500:]
                raise DemoFailedError(f"the agent exited: {tail}")
            try:
                async with session.get(f"http://127.0.0.1:{proxy_port}/v2/") as resp:
                    if resp.status == 200:
                        return proc, proxy_port, exporter_port
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    proc.terminate()
    await proc.wait()
    raise DemoFailedError("the agent did not start listening")


async def _agent_counts(exporter_port: int) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    url = f"http://127.0.0.1:{exporter_port}/metrics"
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        text = await resp.text()
    return {
        s.labels["type"]: s.value
        for fam in text_string_to_metric_families(text)
        if fam.name == "DADIP2P_Count"
        for s in fam.samples
    }


def _check_layout(dest: Path, digests: tuple[str, ...]) -> None:
    for digest in digests:
        data = oci_layout_blob(dest, digest).read_bytes()
        if f"sha256:{hashlib.sha256(data).hexdigest()}" != digest:
            raise DemoFailedError(f"pulled blob {digest} does not match its digest")


async def _demo(console: Console, workdir: Path, layers: int, layer_mib: int) -> None:
    if shutil.which("docker-registry") is None:
        raise DemoFailedError("docker-registry is missing: run `make install` first")
    console.rule("[bold]shoal demo")
    console.print(f"building an image of {layers} layers x {layer_mib} MiB of random bytes")
    image = build_image(
        workdir / "image",
        repo="shoal/demo",
        tag="latest",
        layer_sizes=[layer_mib * MiB] * layers,
        with_index=True,
    )
    async with OriginRegistry(workdir / "origin") as origin:
        await push_image(origin.url, image)
        ref = f"{origin.address}/{image.repo}:{image.tag}"
        console.print(f"origin registry (docker-registry) at {origin.url} holds {ref}")
        proc, proxy_port, exporter_port = await _start_agent(workdir, origin)
        try:
            console.print(f"agent (pid {proc.pid}) mirrors it on http://127.0.0.1:{proxy_port}")
            before = origin.blob_bytes_served()
            console.print("\n[bold]pull straight from the origin")
            with make_progress(console) as progress:
                direct = await pull_image(
                    ref, workdir / "direct", plain_http=True, progress=progress
                )
            direct_origin = origin.blob_bytes_served() - before
            _check_layout(workdir / "direct", direct.blobs)
            before = origin.blob_bytes_served()
            console.print("\n[bold]pull through the shoal agent")
            with make_progress(console) as progress:
                mirrored = await pull_image(
                    ref,
                    workdir / "via-agent",
                    mirror=f"http://127.0.0.1:{proxy_port}",
                    progress=progress,
                )
            agent_origin = origin.blob_bytes_served() - before
            _check_layout(workdir / "via-agent", mirrored.blobs)
            counts = await _agent_counts(exporter_port)
        finally:
            proc.terminate()
            await proc.wait()
    table = Table(title=f"{ref}: {image.total_size / MiB:.1f} MiB in {len(image.blobs())} blobs")
    table.add_column("pull")
    table.add_column("time", justify="right")
    table.add_column("MiB from origin", justify="right")
    table.add_column("MiB through agent", justify="right")
    table.add_column("digests")
    table.add_row("direct", f"{direct.seconds:.2f} s", f"{direct_origin / MiB:.1f}", "-", "ok")
    table.add_row(
        "via agent",
        f"{mirrored.seconds:.2f} s",
        f"{agent_origin / MiB:.1f}",
        f"{counts.get('pread', 0) / MiB:.1f}",
        "ok",
    )
    console.print()
    console.print(table)
    console.print("Every blob came from the origin through the agent (no peers yet: one agent).")
