"""``shoal``: a root per root host and an agent per node; each node pulls through its agent.

The roots (``shoal root``) are started only when that command exists: until the swarm
lands it exits at once with "not yet", and the mode then runs the agents alone, pulling
from the origin — its figures are then those of an agent relay, not of the swarm, and the
report says so. Each node's skopeo uses its own agent (127.0.0.1 in its namespace) as the
mirror; since skopeo falls back to the origin silently, the skopeo logs prove where every
blob came from.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import sys
from collections.abc import Callable
from pathlib import Path

import yaml

from shoal.bench.errors import BenchError
from shoal.bench.modes.base import BenchContext, ModeRun, last_line, mirror_share, run_skopeo
from shoal.bench.netns import Host
from shoal.bench.proc import in_netns
from shoal.bench.workload import wait_http
from shoal.lab.certs import ControlCerts, make_control_certs
from shoal.lab.process import stop_process

AGENT_PORT = 65001
P2P_PORT = 65002
ROOT_PROBE_S = 3.0


def node_config(
    ctx: BenchContext,
    host: Host,
    mode: str,
    roots: list[str],
    cache: Path,
    secret: str,
    certs: ControlCerts | None = None,
) -> str:
    """An agent's or a root's config; a root's control API is on its ``ProxyConfig.port``,
    over TLS with ``certs`` (the run's own CA)."""
    origin = ctx.workload.registry_host
    doc = {
        "DeployConfig": {"mode": mode, "nodeName": f"{host.ip}:{AGENT_PORT}"},
        "ExporterConfig": {"enable": ctx.exporter and mode == "agent", "port": 65003},
        "ProxyConfig": {"port": AGENT_PORT},
        "P2PConfig": {
            "p2pPort": P2P_PORT,
            "roots": roots,
            "secret": secret,
            # the namespace's hostname resolves to the machine's address, not this host's
            "advertise": host.ip,
        },
        "CacheConfig": {
            "path": str(cache),
            "capacity": ctx.capacity or 4 * ctx.workload.image.total_size,
            "pieceSize": ctx.piece_size,
        },
        "UpstreamConfig": {
            "default": origin,
            "registries": [{"host": origin, "plainHTTP": True}],
        },
        "ControlConfig": certs.config() if certs is not None else {"tls": False},
    }
    if ctx.stripes and mode == "root":
        doc["SwarmConfig"] = {"scheduler": {"stripes": ctx.stripes}}
    return yaml.safe_dump(doc, sort_keys=False)


async def run_shoal(ctx: BenchContext) -> ModeRun:
    base = ctx.mode_dir("shoal")
    logs = base / "logs"
    logs.mkdir(exist_ok=True)
    procs: list[asyncio.subprocess.Process] = []
    notes: list[str] = []
    secret = secrets.token_hex(16)
    names = [*(h.ip for h in ctx.cluster.roots), "localhost"]
    certs = make_control_certs(base / "control-tls", names)
    try:
        roots = await _start_roots(ctx, base, procs, secret, certs)
        if roots:
            notes.append(f"{len(roots)} root(s): {', '.join(roots)}")
        elif ctx.cluster.roots:
            notes.append(
                "no roots: `shoal root` is not built yet, so every agent relays from the "
                "origin; these figures are the agent without the swarm"
            )
        else:
            notes.append(
                "no roots (--roots 0): every agent relays from the origin; these figures "
                "are the agent without the swarm"
            )
        await start_agents(
            ctx,
            base,
            procs,
            lambda node, cache: node_config(ctx, node, "agent", roots, cache, secret, certs),
        )
        agent = f"127.0.0.1:{AGENT_PORT}"
        if ctx.by_address:
            nodes, cpu = await run_skopeo(
                ctx, "shoal", lambda node: None, registry_for=lambda node: agent
            )
        else:
            nodes, cpu = await run_skopeo(ctx, "shoal", lambda node: agent)
    finally:
        await _stop_all(procs)
    how = (
        "skopeo copy docker://127.0.0.1:65001/... (the node's agent by address)"
        if ctx.by_address
        else "skopeo copy with the node's own agent as [[registry.mirror]]"
    )
    notes.insert(0, f"{how}; time = release to skopeo exit")
    via = mirror_share(nodes, lambda node: f"127.0.0.1:{AGENT_PORT}")
    if via < 1.0:
        notes.append(f"only {via:.0%} of the nodes took every blob from their agent (skopeo logs)")
    return ModeRun("shoal", nodes, cpu, notes=notes, extra={"roots": len(roots), "via_mirror": via})


async def start_agents(
    ctx: BenchContext,
    base: Path,
    procs: list[asyncio.subprocess.Process],
    config: Callable[[Host, Path], str],
) -> None:
    """``shoal agent`` on every node, its file ``config(node, cache dir)``; back when
    every mirror answers. The processes go on ``procs`` (the caller stops them)."""
    logs = base / "logs"
    started = []
    for node in ctx.nodes:
        cfg = base / node.role / "agent.yml"
        cfg.parent.mkdir(exist_ok=True)
        cfg.write_text(config(node, base / node.role / "cache"))
        log = logs / f"agent-{node.role}.log"
        proc = await _spawn(node.netns, cfg, log)
        procs.append(proc)
        started.append((node, proc, log))
    await asyncio.gather(
        *(
            _wait_up(node.netns, f"http://127.0.0.1:{AGENT_PORT}/v2/", proc, log)
            for node, proc, log in started
        )
    )


async def _spawn(netns: str, cfg: Path, log_path: Path) -> asyncio.subprocess.Process:
    role = "root" if cfg.name.startswith("root") else "agent"
    with log_path.open("ab") as log:
        return await asyncio.create_subprocess_exec(
            *in_netns(netns, [sys.executable, "-m", "shoal", role, "--config", str(cfg)]),
            stdout=log,
            stderr=log,
            stdin=asyncio.subprocess.DEVNULL,
        )


async def _start_roots(
    ctx: BenchContext,
    base: Path,
    procs: list[asyncio.subprocess.Process],
    secret: str,
    certs: ControlCerts,
) -> list[str]:
    """Start ``shoal root`` on each root host; [] when that command is not built yet."""
    hosts = ctx.cluster.roots
    if not hosts:
        return []
    started: list[tuple[Host, asyncio.subprocess.Process, Path]] = []
    for host in hosts:
        cfg = base / host.role / "root.yml"
        cfg.parent.mkdir(exist_ok=True)
        cfg.write_text(
            node_config(ctx, host, "root", [], base / host.role / "cache", secret, certs)
        )
        log = base / "logs" / f"{host.role}.log"
        proc = await _spawn(host.netns, cfg, log)
        procs.append(proc)
        started.append((host, proc, log))
    host, proc, log = started[0]
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(proc.wait(), ROOT_PROBE_S)
    if proc.returncode is not None:
        text = log.read_text(errors="replace")
        if "not yet" in text:
            return []
        raise BenchError(f"shoal root on {host.role} exited {proc.returncode}: {text[-200:]}")
    for host, proc, log in started:
        await _wait_up(
            host.netns, f"https://{host.ip}:{AGENT_PORT}/healthz", proc, log, str(certs.ca_file)
        )
    return [f"{host.ip}:{AGENT_PORT}" for host in hosts]


async def _wait_up(
    netns: str,
    url: str,
    proc: asyncio.subprocess.Process,
    log: Path,
    cafile: str | None = None,
    timeout_s: float = 60,
) -> None:
    waiter = asyncio.ensure_future(wait_http(netns, url, timeout_s, cafile=cafile))
    dead = asyncio.ensure_future(proc.wait())
    await asyncio.wait([waiter, dead], return_when=asyncio.FIRST_COMPLETED)
    if not waiter.done():
        waiter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiter
        raise BenchError(f"shoal in {netns} exited: {last_line(log)}")
    dead.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await dead
    waiter.result()


async def _stop_all(procs: list[asyncio.subprocess.Process]) -> None:
    """SIGTERM to all at once (agents shut down cleanly), SIGKILL what is left after 5 s."""
    await asyncio.gather(*(stop_process(proc, grace=5) for proc in procs))
