"""CPU seconds per byte of each part of a pull through shoal, for ``shoal sim --host-cores``.

Not a test: a measurement, run by hand. ``shoal bench`` runs every node, root and
client on this one machine, so at N=16 its pulls are CPU-bound; ``shoal sim
--host-cores`` charges CPU per byte moved to predict that, at rates measured here, never
fitted to the benchmark it predicts. The real processes, one at a time:

- a real origin (``docker-registry``), one ``shoal root`` and two ``shoal agent``
  processes with ``--piece-kib`` pieces (default the agent's own 4 MiB), an image of
  ``--layers`` x ``--layer-mib`` random layers;
- phase ``cold0``: skopeo pulls through agent 0 (the root fetches from the origin and
  serves agent 0, which serves skopeo);
- phase ``warm0``: skopeo pulls through agent 0 again (agent 0 only serves skopeo);
- phase ``cold1``: skopeo pulls through agent 1 (its parents: the root and agent 0).

With ``--rate-mbit R`` (needs root) the hosts are the benchmark's own: network
namespaces on a bridge, every link shaped to R Mbit/s by ``tbf`` (``shoal.bench``'s
``Cluster``), the agents configured as ``shoal bench`` configures them. Without it they
run on loopback, unshaped (``lab.LocalCluster``).

Each process's user + system CPU comes from ``/proc/PID/stat`` around each phase (its
idle rate, measured first, is subtracted); skopeo's from ``RUSAGE_CHILDREN``. Per byte
of image:

- ``serve``    = agent 0 in ``warm0`` (answer the runtime from the piece store);
- ``client``   = skopeo, mean of the three phases (the runtime's own work);
- ``recv``     = agent 1 in ``cold1`` - ``serve`` (fetch pieces its parents hold,
  verify, store);
- ``recv-cut`` = agent 0 in ``cold0`` - ``serve``: the same, but every request waits at a
  parent that is still fetching the piece (cut-through, here the root's origin stream);
- ``send``     = root + agent 0 in ``cold1`` (serve pieces to a peer);
- ``fetch``    = root in ``cold0`` - ``send`` (fetch from the origin, verify, store);
- ``registry`` = the origin registry in ``cold0``.

The machine's busy time (``/proc/stat``) beyond these processes is printed per phase as
``other``: kernel work not charged to them (of which interrupts and softirqs, where the
shaped links' forwarding runs, are printed), and anything else running on the machine.

    .venv/bin/python bench/cpu_cost.py                          # loopback, 4 x 64 MiB
    sudo .venv/bin/python bench/cpu_cost.py --rate-mbit 100     # the benchmark's links
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from shoal.bench.cpu import read_stat
from shoal.bench.modes.base import registries_conf
from shoal.bench.netns import Cluster
from shoal.bench.proc import in_netns
from shoal.bench.workload import push_via_loopback, wait_http
from shoal.lab.certs import make_control_certs
from shoal.lab.cluster import LocalCluster
from shoal.lab.image import BuiltImage, build_image, push_image
from shoal.lab.origin import OriginRegistry
from shoal.lab.process import stop_process

MiB = 1 << 20
TICK = os.sysconf("SC_CLK_TCK")
AGENT_PORT, P2P_PORT, REGISTRY_PORT = 65001, 65002, 5000


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def pid_with_arg(fragment: str) -> int:
    """The process whose command line holds ``fragment`` (the origin registry's config)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if fragment.encode() in (entry / "cmdline").read_bytes():
                    return int(entry.name)
    raise SystemExit(f"no process with {fragment!r} in its command line")


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def busy_seconds() -> float:
    """CPU seconds the whole machine has been busy (all cores)."""
    return read_stat()[0] / TICK


def softirq_seconds() -> float:
    """CPU seconds the whole machine spent in interrupts and softirqs (network stack)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return (fields[5] + fields[6]) / TICK


@dataclass
class Phase:
    name: str
    seconds: float
    cpu: dict[str, float]  # process -> CPU seconds in the phase, idle rate subtracted
    other: float  # machine busy time not in ``cpu``
    softirq: float  # of which interrupts and softirqs


#: pull(agent index, tag) runs skopeo through that agent
Pull = Callable[[int, str], Coroutine[Any, Any, None]]


async def skopeo(argv_prefix: list[str], work: Path, ref: str, mirror: str, tag: str) -> None:
    registry = ref.split("/", 1)[0]
    conf = work / f"registries-{tag}.conf"
    conf.write_text(registries_conf(registry, mirror))
    argv = [
        *argv_prefix,
        "skopeo",
        "--insecure-policy",
        "--registries-conf",
        str(conf),
        "--tmpdir",
        str(work),
        "copy",
        "--retry-times",
        "0",
        "--src-tls-verify=false",
        f"docker://{ref}",
        f"oci:{work / ('oci-' + tag)}:latest",
    ]
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"skopeo failed: {err.decode(errors='replace')[-400:]}")


async def measure(pids: dict[str, int], pull: Pull) -> list[Phase]:
    before = {k: cpu_seconds(p) for k, p in pids.items()}
    t0 = time.perf_counter()
    await asyncio.sleep(3.0)  # idle CPU (heartbeats, timers), subtracted from every phase
    idle_s = time.perf_counter() - t0
    idle = {k: (cpu_seconds(p) - before[k]) / idle_s for k, p in pids.items()}
    phases: list[Phase] = []
    for name, agent in (("cold0", 0), ("warm0", 0), ("cold1", 1)):
        before = {k: cpu_seconds(p) for k, p in pids.items()}
        c0, b0, s0 = children_cpu(), busy_seconds(), softirq_seconds()
        t0 = time.perf_counter()
        await pull(agent, name)
        dt = time.perf_counter() - t0
        raw = {k: cpu_seconds(p) - before[k] for k, p in pids.items()}
        raw["skopeo"] = children_cpu() - c0
        other = busy_seconds() - b0 - sum(raw.values())
        cpu = {k: v - idle.get(k, 0.0) * dt for k, v in raw.items()}
        phases.append(Phase(name, dt, cpu, other, softirq_seconds() - s0))
    return phases


async def on_loopback(work: Path, image: BuiltImage, piece: int) -> list[Phase]:
    async with OriginRegistry(work / "origin") as origin:
        await push_image(origin.url, image)
        origin_pid = pid_with_arg(str(work / "origin" / "config.yml"))
        async with LocalCluster(
            work / "cluster", origin.address, agents=2, roots=1, piece_size=piece
        ) as cluster:
            pids = {"registry": origin_pid}
            for name, node in (
                ("root", cluster.roots[0]),
                *zip(("agent0", "agent1"), cluster.agents, strict=True),
            ):
                assert node.proc is not None
                pids[name] = node.proc.pid
            ref = f"{origin.address}/{image.repo}:{image.tag}"

            async def pull(agent: int, tag: str) -> None:
                await skopeo([], work, ref, cluster.agents[agent].mirror, tag)

            return await measure(pids, pull)


@contextlib.asynccontextmanager
async def spawned(argv: list[str], log: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    with log.open("ab") as out:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=out, stderr=out, stdin=asyncio.subprocess.DEVNULL
        )
    try:
        yield proc
    finally:
        await stop_process(proc)


async def in_namespaces(work: Path, image: BuiltImage, piece: int, rate_mbit: float) -> list[Phase]:
    """The benchmark's hosts: namespaces on a bridge, every link shaped by tbf."""
    rate_bit = int(rate_mbit * 1e6)
    cluster = Cluster(
        nodes_n=2, roots_n=1, rate_bit=rate_bit, origin_rate_bit=rate_bit, workdir=work
    )
    await push_via_loopback(work / "origin", image)
    try:
        cluster.up()
        assert cluster.origin is not None
        origin = OriginRegistry(
            work / "origin", host=cluster.origin.ip, port=REGISTRY_PORT, netns=cluster.origin.netns
        )
        await origin.start()
        try:
            await wait_http(cluster.origin.netns, f"{origin.url}/v2/")
            secret = secrets.token_hex(16)
            root_host = cluster.roots[0]
            roots = [f"{root_host.ip}:{AGENT_PORT}"]
            certs = make_control_certs(work / "control-tls", [root_host.ip])
            async with contextlib.AsyncExitStack() as stack:
                pids = {"registry": pid_with_arg(str(work / "origin" / "config.yml"))}
                for name, host, mode in (
                    ("root", root_host, "root"),
                    ("agent0", cluster.nodes[0], "agent"),
                    ("agent1", cluster.nodes[1], "agent"),
                ):
                    doc = {  # as shoal bench configures its nodes (bench/modes/shoal.py)
                        "DeployConfig": {"mode": mode, "nodeName": f"{host.ip}:{AGENT_PORT}"},
                        "ExporterConfig": {"enable": False},
                        "ProxyConfig": {"port": AGENT_PORT},
                        "P2PConfig": {
                            "p2pPort": P2P_PORT,
                            "roots": roots if mode == "agent" else [],
                            "secret": secret,
                            "advertise": host.ip,
                        },
                        "CacheConfig": {
                            "path": str(work / f"{name}-cache"),
                            "capacity": 4 * image.total_size,
                            "pieceSize": piece,
                        },
                        "UpstreamConfig": {
                            "default": origin.address,
                            "registries": [{"host": origin.address, "plainHTTP": True}],
                        },
                        "ControlConfig": certs.config(),
                    }
                    cfg = work / f"{name}.yml"
                    cfg.write_text(yaml.safe_dump(doc, sort_keys=False))
                    argv = [sys.executable, "-m", "shoal", mode, "--config", str(cfg)]
                    proc = await stack.enter_async_context(
                        spawned(in_netns(host.netns, argv), work / f"{name}.log")
                    )
                    pids[name] = proc.pid  # ``ip netns exec`` execs: the same PID
                    if mode == "root":
                        url = f"https://{host.ip}:{AGENT_PORT}/healthz"
                        await wait_http(host.netns, url, 60, cafile=str(certs.ca_file))
                    else:
                        await wait_http(host.netns, f"http://127.0.0.1:{AGENT_PORT}/v2/", 60)
                ref = f"{origin.address}/{image.repo}:{image.tag}"

                async def pull(agent: int, tag: str) -> None:
                    prefix = in_netns(cluster.nodes[agent].netns, [])
                    await skopeo(prefix, work, ref, f"127.0.0.1:{AGENT_PORT}", tag)

                return await measure(pids, pull)
        finally:
            await origin.stop()
    finally:
        cluster.down()


def ns_per_byte(cpu: float, size: int) -> float:
    return cpu / size * 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--layers", type=int, default=4, help="layers in the image (default 4)")
    ap.add_argument("--layer-mib", type=int, default=64, help="MiB per layer (default 64)")
    ap.add_argument("--piece-kib", type=int, default=4096, help="piece size, KiB (default 4096)")
    ap.add_argument("--repeat", type=int, default=3, help="runs; the median is kept (default 3)")
    ap.add_argument(
        "--rate-mbit",
        type=float,
        default=0.0,
        help="run in shaped namespaces as shoal bench does, links at this rate (needs root)",
    )
    args = ap.parse_args()
    piece = args.piece_kib * 1024
    where = f"namespaces, links {args.rate_mbit:g} Mbit/s" if args.rate_mbit else "loopback"
    print(
        f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}; image "
        f"{args.layers} x {args.layer_mib} MiB, {args.piece_kib} KiB pieces, {where}, "
        f"{args.repeat} run(s)",
        flush=True,
    )
    keys = ("recv", "recv-cut", "send", "serve", "client", "fetch", "registry")
    figures: dict[str, list[float]] = {k: [] for k in keys}
    for run in range(args.repeat):
        with tempfile.TemporaryDirectory(prefix="shoal-cpu-", dir="/var/tmp") as tmp:
            work = Path(tmp)
            os.chmod(work, 0o755)
            image = build_image(
                work / "img", repo="bench/cpu", layer_sizes=[args.layer_mib * MiB] * args.layers
            )
            size = sum(layer.size for layer in image.layers)
            if args.rate_mbit:
                phases = asyncio.run(in_namespaces(work, image, piece, args.rate_mbit))
            else:
                phases = asyncio.run(on_loopback(work, image, piece))
        cold0, warm0, cold1 = phases
        for ph in phases:
            parts = ", ".join(f"{k} {v:.2f}" for k, v in ph.cpu.items())
            print(
                f"run {run + 1} {ph.name}: {ph.seconds:.2f} s wall; CPU s: {parts}; "
                f"other {ph.other:.2f} (softirq {ph.softirq:.2f})",
                flush=True,
            )
        serve = ns_per_byte(warm0.cpu["agent0"], size)
        send = ns_per_byte(cold1.cpu["root"] + cold1.cpu["agent0"], size)
        figures["serve"].append(serve)
        figures["send"].append(send)
        figures["recv"].append(ns_per_byte(cold1.cpu["agent1"], size) - serve)
        figures["recv-cut"].append(ns_per_byte(cold0.cpu["agent0"], size) - serve)
        figures["client"].append(
            statistics.mean(ns_per_byte(ph.cpu["skopeo"], size) for ph in phases)
        )
        figures["fetch"].append(ns_per_byte(cold0.cpu["root"], size) - send)
        figures["registry"].append(ns_per_byte(cold0.cpu["registry"], size))
    med = {k: statistics.median(v) for k, v in figures.items()}
    print(f"\nCPU per byte of image ({size:,} bytes), median of the runs, ns/byte:")
    for k in keys:
        runs = ", ".join(f"{v:.2f}" for v in figures[k])
        print(f"  {k:8} {med[k]:6.2f}   (runs: {runs})")
    print("\nshoal sim options: " + " ".join(f"--cpu-{k}-ns {med[k]:.2f}" for k in keys))


if __name__ == "__main__":
    main()
