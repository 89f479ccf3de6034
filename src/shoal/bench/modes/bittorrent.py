"""``bittorrent``: each layer blob spread by a real swarm (aria2, opentracker, mktorrent).

What a node's time measures: from the common release, the node fetches the manifest and
the config from the origin with curl (a few hundred bytes), then one ``aria2c`` joins the
swarm of every layer at once; the node is complete when aria2 has reported every layer
finished (every piece checked against the torrent's SHA-1). Torrent files are placed on
the nodes beforehand, as a registry would hand out metadata. The origin host seeds every
layer and runs the tracker; nodes keep seeding until every node is complete. Afterwards
each node's files are checked against the image's sha256 digests (outside the clock).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import urllib.parse
from pathlib import Path

from shoal.bench.bencode import info_hash, scrape_complete
from shoal.bench.cpu import CpuMeter
from shoal.bench.errors import BenchError
from shoal.bench.gate import Gate
from shoal.bench.modes.base import BenchContext, ModeRun, NodeResult
from shoal.bench.proc import in_netns, run
from shoal.bench.workload import check_blob_file
from shoal.lab.image import OCI_MANIFEST

TRACKER_PORT = 6969
SEED_PORT = 6881
#: 2**18 = 256 KiB pieces: a piece is shared only once whole, small pieces pipeline better
PIECE_EXP = 18

ARIA2_COMMON = [
    "aria2c",
    "--enable-dht=false",
    "--enable-dht6=false",
    "--bt-enable-lpd=false",
    "--enable-peer-exchange=true",
    "--disable-ipv6=true",
    "--seed-ratio=0.0",  # seed until killed (the end of the mode)
    "--bt-tracker-interval=5",
    "--file-allocation=none",
    "--summary-interval=0",
    "--console-log-level=warn",
    "--bt-max-peers=0",
]


async def run_bittorrent(ctx: BenchContext) -> ModeRun:
    origin = ctx.cluster.origin
    assert origin is not None
    base = ctx.mode_dir("bittorrent")
    logs = base / "logs"
    logs.mkdir(exist_ok=True)
    image = ctx.workload.image
    layers = image.layers
    seed_dir = base / "seed"
    tor_dir = base / "torrents"
    seed_dir.mkdir(exist_ok=True)
    tor_dir.mkdir(exist_ok=True)
    announce = f"http://{origin.ip}:{TRACKER_PORT}/announce"
    hashes: list[bytes] = []
    torrents: list[Path] = []
    for layer in layers:
        name = layer.digest.split(":")[1]
        target = seed_dir / name
        if not target.exists():
            os.link(layer.path, target)
        torrent = tor_dir / f"{name}.torrent"
        torrent.unlink(missing_ok=True)
        run(
            [
                "mktorrent",
                "-a",
                announce,
                "-l",
                str(PIECE_EXP),
                "-n",
                name,
                "-o",
                str(torrent),
                str(target),
            ],
            timeout=120,
        )
        torrents.append(torrent)
        hashes.append(info_hash(torrent.read_bytes()))
    (base / "whitelist").write_text("".join(h.hex() + "\n" for h in hashes))

    servers: list[asyncio.subprocess.Process] = []
    gate = Gate(base)
    meter = CpuMeter()
    results: list[NodeResult] = []
    try:
        servers.append(
            await _spawn(
                origin.netns,
                [
                    "opentracker",
                    "-i",
                    origin.ip,
                    "-p",
                    str(TRACKER_PORT),
                    "-P",
                    str(TRACKER_PORT),
                    "-w",
                    str(base / "whitelist"),
                ],
                logs / "tracker.log",
                base,
            )
        )
        servers.append(
            await _spawn(
                origin.netns,
                [
                    *ARIA2_COMMON,
                    f"--dir={seed_dir}",
                    "--check-integrity=true",
                    f"--listen-port={SEED_PORT}",
                    f"--max-concurrent-downloads={len(layers)}",
                    *map(str, torrents),
                ],
                logs / "seeder.log",
                base,
            )
        )
        await _wait_seeded(origin.netns, origin.ip, hashes, ctx.timeout_s)

        reg = f"http://{ctx.workload.registry_host}/v2/{image.repo}"
        done_files: dict[str, Path] = {}
        for node in ctx.nodes:
            ndir = base / node.role
            (ndir / "data").mkdir(parents=True, exist_ok=True)
            done = ndir / "done.log"
            done.unlink(missing_ok=True)
            done_files[node.role] = done
            hook = ndir / "hook.sh"
            hook.write_text(f'#!/bin/sh\necho "$(date +%s.%N) $3" >> {done}\n')
            hook.chmod(0o755)
            script = ndir / "run.sh"
            script.write_text(
                "set -e\n"
                f"curl -sf -H 'Accept: {OCI_MANIFEST}' -o {ndir}/manifest.json "
                f"{reg}/manifests/{image.tag}\n"
                f"curl -sf -o {ndir}/config.json {reg}/blobs/{image.config.digest}\n"
                + " ".join(
                    [
                        "exec",
                        *ARIA2_COMMON,
                        f"--dir={ndir / 'data'}",
                        f"--on-bt-download-complete={hook}",
                        f"--max-concurrent-downloads={len(layers)}",
                        *map(str, torrents),
                    ]
                )
                + "\n"
            )
            await gate.park(node.netns, ["sh", str(script)], logs / f"{node.role}.log")
        meter.start()
        start = await gate.release()
        finished = await _watch(ctx, gate, done_files, len(layers), start)
        cpu = await meter.stop()
    finally:
        await gate.aclose()
        for proc in servers:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    for node in ctx.nodes:
        seconds = finished.get(node.role)
        if seconds is None:
            results.append(NodeResult(node.role, None, f"not complete in {ctx.timeout_s:.0f}s"))
            continue
        error = _check_node(base / node.role, ctx)
        results.append(NodeResult(node.role, None if error else seconds, error))
    notes = [
        "manifest and config by curl from the origin, then every layer by one aria2c in the "
        "swarm; time = release to aria2 reporting the last layer complete",
        f"{2**PIECE_EXP // 1024} KiB pieces; the origin host seeds and runs opentracker",
    ]
    return ModeRun("bittorrent", results, cpu, notes=notes)


async def _spawn(
    netns: str, argv: list[str], log_path: Path, cwd: Path
) -> asyncio.subprocess.Process:
    with log_path.open("ab") as log:
        return await asyncio.create_subprocess_exec(
            *in_netns(netns, argv),
            stdout=log,
            stderr=log,
            stdin=asyncio.subprocess.DEVNULL,
            cwd=cwd,
        )


async def _wait_seeded(netns: str, ip: str, hashes: list[bytes], timeout_s: float) -> None:
    """The nodes must find the seeder at their first announce: wait until the tracker has it."""
    query = "&".join(f"info_hash={urllib.parse.quote(h)}" for h in hashes)
    url = f"http://{ip}:{TRACKER_PORT}/scrape?{query}"
    deadline = time.monotonic() + min(timeout_s, 60)
    while True:
        proc = await asyncio.create_subprocess_exec(
            *in_netns(netns, ["curl", "-sf", "--max-time", "2", url]),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        out, _ = await proc.communicate()
        if proc.returncode == 0:
            with contextlib.suppress(BenchError):
                if all(scrape_complete(out, h) >= 1 for h in hashes):
                    return
        if time.monotonic() > deadline:
            raise BenchError("bittorrent: the seeder never reached the tracker")
        await asyncio.sleep(0.2)


async def _watch(
    ctx: BenchContext, gate: Gate, done_files: dict[str, Path], layers: int, start: float
) -> dict[str, float]:
    """Poll each node's hook log until it lists every layer; a node's time is its last.

    A node whose client exited before that is given up on (reported as failed).
    """
    finished: dict[str, float] = {}
    gone: set[str] = set()
    procs = {role: gate.parked[i].proc for i, role in enumerate(done_files)}
    deadline = time.monotonic() + ctx.timeout_s
    while len(finished) + len(gone) < len(done_files) and time.monotonic() < deadline:
        for role, path in done_files.items():
            if role in finished or role in gone:
                continue
            try:
                lines = path.read_text().split("\n")
            except OSError:
                lines = []
            stamps = [float(line.split()[0]) for line in lines if line.strip()]
            if len(stamps) >= layers:
                finished[role] = max(stamps) - start
                ctx.on_node_done(role, finished[role])
            elif procs[role].returncode is not None:
                gone.add(role)
                ctx.on_node_done(role, None)
        await asyncio.sleep(0.05)
    return finished


def _check_node(ndir: Path, ctx: BenchContext) -> str | None:
    image = ctx.workload.image
    for layer in image.layers:
        error = check_blob_file(ndir / "data" / layer.digest.split(":")[1], layer.digest)
        if error:
            return error
    error = check_blob_file(ndir / "config.json", image.config.digest)
    if error:
        return error
    return check_blob_file(ndir / "manifest.json", image.manifest_digest)
