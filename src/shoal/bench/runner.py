"""One benchmark run: build the hosts and the image once, then run each mode in turn.

Every mode sees the same namespaces, the same shaping and the same origin process, one
after another, so that a shared machine's noise lands on all of them alike. Bytes that
left the origin host are read twice per mode: from the origin's ``eth0`` counters (all
traffic, including the BitTorrent seeder and the tracker) and from the registry's own log
(blob bodies only).
"""

from __future__ import annotations

import asyncio
import os
import resource
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from shoal.bench.cpu import CpuUse
from shoal.bench.errors import BenchError
from shoal.bench.modes import MODES, required_tools
from shoal.bench.modes.base import BenchContext, ModeRun, NodeDone
from shoal.bench.netns import Cluster, Host, cleanup_leftovers
from shoal.bench.proc import require
from shoal.bench.shaping import BURST_MS, QUEUE_MS
from shoal.bench.workload import (
    REGISTRY_PORT,
    Workload,
    make_image,
    push_via_loopback,
    wait_http,
)
from shoal.lab.origin import OriginRegistry

MIB = 1 << 20


@dataclass(frozen=True, slots=True)
class BenchOptions:
    nodes: int = 16
    roots: int = 1
    rate_mbit: float = 100.0
    origin_rate_mbit: float = 100.0
    layers: int = 4
    layer_mib: float = 16.0
    #: the swarm's piece size in KiB for the shoal mode; 0: shoal's own choice
    piece_kib: int = 0
    #: the roots' stripe trees per blob (``SwarmConfig.scheduler.stripes``); 0: the default
    stripes: int = 0
    modes: tuple[str, ...] = ("direct", "proxy", "bittorrent", "shoal")
    timeout_s: float = 600.0
    seed: int = 1
    keep_workdir: bool = False
    #: every link's tbf queue (``latency``), ms of traffic: each depth runs every mode, in
    #: one run (so the noise between depths cancels)
    queue_ms: tuple[float, ...] = (QUEUE_MS,)
    #: every link's tbf burst, ms of traffic
    burst_ms: float = BURST_MS
    #: shoal mode: skopeo pulls ``docker://127.0.0.1:65001/...`` instead of using its
    #: agent as a configured mirror
    by_address: bool = False
    #: shoal mode: the agents' metrics exporter on (port 65003)
    exporter: bool = False
    #: shoal mode: each store's capacity, GiB; 0 = four times the image
    capacity_gib: float = 0.0

    @property
    def rate_bit(self) -> int:
        return int(self.rate_mbit * 1_000_000)

    @property
    def origin_rate_bit(self) -> int:
        return int(self.origin_rate_mbit * 1_000_000)

    @property
    def layer_bytes(self) -> int:
        return max(1, int(self.layer_mib * MIB))


@dataclass(slots=True)
class ModeResult:
    run: ModeRun
    origin_tx_bytes: int  # the origin host's eth0, everything it sent during the mode
    origin_blob_bytes: int  # blob bodies in the registry's log
    wall_s: float
    skipped: str | None = None
    #: CPU seconds (user + system) of the mode's own processes, reaped by its end: the
    #: clients, caches, agents, swarm; not the origin registry, not other users' load
    own_cpu_s: float = 0.0
    #: the links' queue (tbf latency) during this mode, ms
    queue_ms: float = QUEUE_MS


@dataclass(slots=True)
class BenchResult:
    options: BenchOptions
    image_bytes: int  # config + layers: what one node must receive
    layer_bytes: int
    prefix: str = ""  # the run's name prefix: namespaces, state file, workdir
    workdir: Path = Path()
    subnet: str = ""
    modes: list[ModeResult] = field(default_factory=list)


async def run_benchmark(
    opts: BenchOptions,
    *,
    on_mode: Callable[[str], None] = lambda mode: None,
    on_node_done: NodeDone = lambda node, seconds: None,
) -> BenchResult:
    """Run every mode of ``opts``; everything made is removed before this returns."""
    for mode in opts.modes:
        if mode not in MODES:
            raise BenchError(f"unknown mode {mode!r} (choose from {', '.join(MODES)})")
    require("ip", "tc", "docker-registry", *required_tools(opts.modes))
    cleanup_leftovers()
    cluster_prefix = Cluster(0, 0, 1, 1, Path()).prefix
    workdir = Path(tempfile.mkdtemp(prefix=f"{cluster_prefix}-", dir="/var/tmp"))
    os.chmod(workdir, 0o755)  # opentracker drops to ``nobody`` and must still read its whitelist
    cluster = Cluster(
        nodes_n=opts.nodes,
        roots_n=opts.roots,
        rate_bit=opts.rate_bit,
        origin_rate_bit=opts.origin_rate_bit,
        workdir=workdir,
        keep_workdir=opts.keep_workdir,
        queue_ms=opts.queue_ms[0],
        burst_ms=opts.burst_ms,
    )
    origin: OriginRegistry | None = None
    try:
        image = await asyncio.to_thread(
            make_image, workdir, opts.layers, opts.layer_bytes, opts.seed
        )
        await push_via_loopback(workdir / "origin", image)
        cluster.up()
        assert cluster.origin is not None
        origin = OriginRegistry(
            workdir / "origin",
            host=cluster.origin.ip,
            port=REGISTRY_PORT,
            netns=cluster.origin.netns,
        )
        await origin.start()
        await wait_http(cluster.origin.netns, f"{origin.url}/v2/")
        workload = Workload(image, origin.address)
        result = BenchResult(
            opts,
            image_bytes=image.total_size,
            layer_bytes=workload.layer_bytes,
            prefix=cluster.prefix,
            workdir=workdir,
            subnet=cluster.subnet,
        )
        ctx = BenchContext(
            cluster=cluster,
            workload=workload,
            origin=origin,
            workdir=workdir,
            timeout_s=opts.timeout_s,
            piece_size=opts.piece_kib * 1024,
            stripes=opts.stripes,
            on_node_done=on_node_done,
            by_address=opts.by_address,
            exporter=opts.exporter,
            capacity=int(opts.capacity_gib * (1 << 30)),
        )
        for depth in opts.queue_ms:
            if depth != cluster.queue_ms:
                cluster.reshape(depth)
            for mode in opts.modes:
                on_mode(mode if len(opts.queue_ms) == 1 else f"{mode} {depth:g}ms")
                result.modes.append(await _run_mode(ctx, mode))
                ctx.empty_mode_dir(mode)
        return result
    finally:
        if origin is not None:
            await origin.stop()
        cluster.down()


def _link_counters(cluster: Cluster) -> dict[str, int]:
    """What the links carried so far, by role: bytes sent, TCP retransmits."""
    roles: dict[str, list[Host | None]] = {
        "origin": [cluster.origin],
        "roots": list(cluster.roots),
        "nodes": list(cluster.nodes),
    }
    out: dict[str, int] = {}
    for role, hosts in roles.items():
        present = [h for h in hosts if h is not None]
        out[f"{role}_tx_bytes"] = sum(cluster.tx_bytes(h) for h in present)
        out[f"{role}_retransmits"] = sum(cluster.retransmits(h) for h in present)
    return out


async def _run_mode(ctx: BenchContext, mode: str) -> ModeResult:
    assert ctx.cluster.origin is not None
    # every mode starts with nothing dirty in the page cache: the image just built and
    # pushed, or the last mode's writes, are not flushed on this mode's CPU and disk
    await asyncio.to_thread(os.sync)
    links0 = _link_counters(ctx.cluster)
    served0 = len(ctx.origin.served())
    t0 = time.monotonic()
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        run = await MODES[mode](ctx)
    except BenchError as exc:
        # one broken mode must not cost the others' figures; the report shows why
        run = ModeRun(mode, [], CpuUse(0, 0.0, 0.0), notes=[f"not run: {exc.message}"])
        run.extra["skipped"] = exc.message
    wall = time.monotonic() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    own = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    links = {k: v - links0[k] for k, v in _link_counters(ctx.cluster).items()}
    tx = links["origin_tx_bytes"]
    run.extra.update({f"link_{k}": v for k, v in links.items()})
    if ctx.cluster.roots:
        size = ctx.workload.image.total_size
        run.notes.append(
            f"links: the roots sent {links['roots_tx_bytes'] / size:.2f}"
            f" copies, the nodes {links['nodes_tx_bytes'] / size:.2f};"
            f" TCP retransmits: origin {links['origin_retransmits']}, roots "
            f"{links['roots_retransmits']}, nodes {links['nodes_retransmits']}"
        )
    blobs = sum(
        r.written for r in ctx.origin.served()[served0:] if r.method == "GET" and "/blobs/" in r.uri
    )
    skipped = str(run.extra.get("skipped")) if "skipped" in run.extra else None
    return ModeResult(run, tx, blobs, wall, skipped, own, ctx.cluster.queue_ms)
