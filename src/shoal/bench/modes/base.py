"""What every mode shares: the run's context, per-node results, and the skopeo clients.

A mode is an async function from the context to a ``ModeRun``; it starts whatever servers
it needs (a proxy, a tracker, agents), times the nodes, and stops its servers again in a
``finally``. The origin, the hosts and the shaping belong to the run, not to the mode, so
every mode sees exactly the same machine.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from shoal.bench.cpu import CpuMeter, CpuUse
from shoal.bench.gate import Gate
from shoal.bench.netns import Cluster, Host
from shoal.bench.proc import in_netns
from shoal.bench.workload import Workload, check_layout
from shoal.lab.origin import OriginRegistry

NodeDone = Callable[[str, float | None], None]


@dataclass(frozen=True, slots=True)
class NodeResult:
    node: str
    seconds: float | None  # None when the node did not finish with the right bytes
    error: str | None = None
    #: hosts the client fetched blobs from (from its own debug log), for the mirror proof
    blob_hosts: tuple[str, ...] = ()
    #: its first pull failed and it pulled again (``run_skopeo``'s ``retries``); the
    #: time runs on from the release through every try
    retried: bool = False


@dataclass(slots=True)
class ModeRun:
    mode: str
    nodes: list[NodeResult]
    cpu: CpuUse
    #: what exactly this mode's completion time measures, and anything unusual
    notes: list[str] = field(default_factory=list)
    extra: dict[str, float | int | str] = field(default_factory=dict)


@dataclass(slots=True)
class BenchContext:
    cluster: Cluster
    workload: Workload
    origin: OriginRegistry
    workdir: Path
    timeout_s: float
    #: bytes per swarm piece (the roots' CacheConfig.pieceSize); 0: shoal's own choice
    piece_size: int = 0
    #: the roots' stripe trees per blob (``SwarmConfig.scheduler.stripes``); 0: the default
    stripes: int = 0
    on_node_done: NodeDone = lambda node, seconds: None
    #: shoal mode: pull from the agent by address, not through a configured mirror
    by_address: bool = False
    #: shoal mode: the agents' exporter on
    exporter: bool = False
    #: shoal mode: store capacity in bytes; 0 = four times the image
    capacity: int = 0

    @property
    def nodes(self) -> list[Host]:
        return self.cluster.nodes

    def mode_dir(self, mode: str) -> Path:
        path = self.workdir / "modes" / mode
        path.mkdir(parents=True, exist_ok=True)
        return path

    def empty_mode_dir(self, mode: str) -> None:
        """Caches and pulled copies go between modes; logs stay for a post-mortem."""
        for child in self.mode_dir(mode).iterdir():
            if child.is_dir() and child.name != "logs":
                shutil.rmtree(child, ignore_errors=True)


ModeFn = Callable[[BenchContext], Awaitable[ModeRun]]


def registries_conf(origin: str, mirror: str | None) -> str:
    """A registries.conf v2 for skopeo: the origin over plain HTTP, maybe a mirror."""
    text = f'[[registry]]\nlocation = "{origin}"\ninsecure = true\n'
    if mirror:
        text += f'[[registry.mirror]]\nlocation = "{mirror}"\ninsecure = true\n'
    return text


async def run_skopeo(
    ctx: BenchContext,
    mode: str,
    mirror_for: Callable[[Host], str | None],
    *,
    registry_for: Callable[[Host], str] | None = None,
    retries: int = 0,
) -> tuple[list[NodeResult], CpuUse]:
    """Every node runs ``skopeo copy`` into its own OCI directory, all released at once.

    The image comes from the origin (through ``mirror_for(node)`` when that names a
    mirror), or, with ``registry_for``, straight from the registry it names by address.

    A node's time runs from the common release to its skopeo's exit; its result counts
    only if the layout then holds the image's exact bytes (checked after the clock).
    ``retries``: a node whose skopeo failed runs it again, this many times at most, at
    once (a kubelet would, after a back-off), and its result says so.
    """
    base = ctx.mode_dir(mode)
    logs = base / "logs"
    logs.mkdir(exist_ok=True)
    gate = Gate(base)
    meter = CpuMeter()
    tag = ctx.workload.image.tag
    layouts: dict[str, Path] = {}
    argvs: dict[str, list[str]] = {}
    retried: set[str] = set()
    try:
        for node in ctx.nodes:
            ndir = base / node.role
            ndir.mkdir(exist_ok=True)
            conf = ndir / "registries.conf"
            conf.write_text(registries_conf(ctx.workload.registry_host, mirror_for(node)))
            source = ctx.workload.reference
            if registry_for is not None:
                source = registry_for(node) + source[len(ctx.workload.registry_host) :]
            layouts[node.role] = ndir / "oci"
            argv = [
                "skopeo",
                "--insecure-policy",
                "--debug",  # its log names the host of every blob GET: the mirror proof
                "--registries-conf",
                str(conf),
                "--tmpdir",
                str(ndir),
                "copy",
                "--retry-times",
                "0",
                "--src-tls-verify=false",
                f"docker://{source}",
                f"oci:{layouts[node.role]}:{tag}",
            ]
            argvs[node.role] = argv
            await gate.park(node.netns, argv, logs / f"{node.role}.log")
        meter.start()
        start = await gate.release()
        ends: dict[str, float | None] = {}

        async def wait_one(i: int, node: Host) -> None:
            proc = gate.parked[i].proc
            code = await proc.wait()
            if code and retries:
                retried.add(node.role)
                log = logs / f"{node.role}.log"
                code = await run_again(node.netns, argvs[node.role], log, retries)
            seconds = time.time() - start
            ends[node.role] = seconds if code == 0 else None
            ctx.on_node_done(node.role, seconds if code == 0 else None)

        waits = [asyncio.ensure_future(wait_one(i, node)) for i, node in enumerate(ctx.nodes)]
        try:
            await asyncio.wait(waits, timeout=ctx.timeout_s)
        finally:
            for w in waits:
                w.cancel()
            await asyncio.gather(*waits, return_exceptions=True)
        cpu = await meter.stop()
    finally:
        await gate.aclose()
    results = []
    for node in ctx.nodes:
        seconds = ends.get(node.role)
        hosts = blob_hosts(logs / f"{node.role}.log")
        if node.role not in ends:
            error = f"no finish in {ctx.timeout_s:.0f}s"
            results.append(NodeResult(node.role, None, error, hosts))
            continue
        if seconds is None:
            error = last_line(logs / f"{node.role}.log")
            results.append(NodeResult(node.role, None, error, hosts))
            continue
        wrong = check_layout(layouts[node.role], ctx.workload.image)
        again = node.role in retried
        results.append(NodeResult(node.role, None if wrong else seconds, wrong, hosts, again))
    return results, cpu


async def run_again(netns: str | None, argv: list[str], log: Path, tries: int) -> int:
    """Run ``argv`` (in ``netns``) until it exits 0, ``tries`` times at most, its output
    appended to ``log``; its last exit code. Cancelled, it kills the one running."""
    code = 1
    for _ in range(tries):
        with log.open("ab") as out:
            proc = await asyncio.create_subprocess_exec(
                *in_netns(netns, argv),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
            )
        try:
            code = await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        if code == 0:
            break
    return code


_BLOB_GET = re.compile(r'msg="GET https?://([^/"]+)/v2/[^"]*/blobs/sha256:')


def blob_hosts(log: Path) -> tuple[str, ...]:
    """Every host skopeo sent a blob GET to, in order of first use."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return ()
    return tuple(dict.fromkeys(_BLOB_GET.findall(text)))


def mirror_share(nodes: list[NodeResult], mirror: Callable[[str], str]) -> float:
    """Share of nodes whose every blob came from their mirror (skopeo never fell back)."""
    if not nodes:
        return 0.0
    good = sum(1 for n in nodes if n.blob_hosts and set(n.blob_hosts) == {mirror(n.node)})
    return good / len(nodes)


def last_line(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "client failed"
    return lines[-1][-200:] if lines else "client failed"
