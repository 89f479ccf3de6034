"""``shoal sim``: the real scheduler and picker at thousands of nodes, simulated.

Runs one pull of one image by every node at time 0 through shoal (``engine.SwarmSim``:
the unchanged ``shoal.swarm`` classes over ``network.Network``) and through the
standard pull (``baseline.standard_pull``: every node from the origin), and prints
p50/p95/max, the origin's bytes and peak egress, p95 over the physical bound, and the
reduction. ``--scenario reference-table`` runs the matrix of the reference document;
``--from-bench FILE`` replays a real ``shoal bench`` run's parameters and compares
(``replay.py``).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from shoal.errors import ConfigInvalidError
from shoal.sim.baseline import standard_pull
from shoal.sim.engine import SwarmSim
from shoal.sim.params import (
    CHUNK,
    GBIT,
    GIB,
    MB,
    MEASURED,
    MIB,
    NS,
    CpuCosts,
    SimParams,
    measured_costs,
)
from shoal.sim.report import PullStats, plot, stats
from shoal.swarm import SchedulerPolicy

#: ``gzip -d`` of a 282,560,111-byte layer (the first 600,000,000 bytes of
#: ``tar cf - /usr/lib /usr/share``, ``gzip -6``) on one core of this machine:
#: ``taskset -c 0 gzip -dc layer.tar.gz > /dev/null``, 3.04 s user (3 runs, gzip 1.12),
#: 93 MB/s of compressed input (197 MB/s of output). See docs/sim.md.
GUNZIP_BPS = 282_560_111 / 3.04

#: ESSD PL1 throughput: min(120 + 0.5 x GiB, 350) MB/s; the reference's 200 GB disk
#: gives 220 MB/s (Alibaba Cloud ESSD performance table). See docs/sim.md.
PL1_200GB_BPS = min(120 + 0.5 * 200, 350) * MB

#: (shape, layers, published P95 s, published peak back-to-origin Gbit/s)
REFERENCE: tuple[tuple[str, tuple[int, ...], float, float], ...] = (
    ("512 MB x 8", (512 * MIB,) * 8, 116, 2.0),
    ("10 GB x 1", (10 * GIB,), 6 * 60 + 20, 1.2),
    ("4 GB x 5", (4 * GIB,) * 5, 9 * 60 + 15, 5.1),
    ("10 GB x 2", (10 * GIB,) * 2, 9 * 60 + 50, 6.7),
    ("512 MB x 40", (512 * MIB,) * 40, 7 * 60 + 55, 3.8),
    ("20 GB x 1", (20 * GIB,), 11 * 60, 2.5),
    ("2 GB x 10", (2 * GIB,) * 10, 8 * 60 + 13, 3.2),
)

_UNITS = {"": 1, "b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "kib": 1 << 10, "mib": MIB, "gib": GIB}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``sim`` sub-parser's options (called from cli.py)."""
    p.add_argument("--scenario", choices=["reference-table"], help="run a canned matrix")
    p.add_argument("--nodes", type=int, default=1000, help="agents pulling at once")
    p.add_argument("--roots", type=int, default=1, help="root replicas")
    p.add_argument("--image", default="8x512MiB", help="layers, e.g. 8x512MiB or 1GiB,2x256MiB")
    p.add_argument("--link-gbit", type=float, default=10.0, help="node link, Gbit/s each way")
    p.add_argument("--origin-gbit", type=float, default=10.0, help="origin egress, Gbit/s")
    p.add_argument("--disk-mbs", type=float, default=0.0, help="disk write MB/s (0: no limit)")
    p.add_argument("--piece-mib", type=float, default=4.0, help="piece size, MiB")
    p.add_argument(
        "--chunk-kib",
        type=float,
        default=None,
        metavar="KIB",
        help=f"an agent passes a piece on {CHUNK >> 10} KiB at a time while it still "
        "receives it (its chunk hashes); 0: only once the piece is whole "
        f"(store-and-forward; default {CHUNK >> 10}, --from-bench: the bench's, 0 before "
        "chunk hashes)",
    )
    p.add_argument("--seed", type=int, default=1, help="random seed")
    p.add_argument(
        "--lookahead",
        type=float,
        default=0.0,
        metavar="SHARE",
        help="an agent starts each next layer once this share of the one before is stored "
        "(0: all layers at once)",
    )
    p.add_argument(
        "--stripes",
        type=int,
        default=0,
        metavar="K",
        help="the root's stripe trees per blob (SwarmConfig.scheduler.stripes; "
        "0: the default; --from-bench: the bench's when it set one)",
    )
    p.add_argument("--stragglers", type=float, default=0.0, help="fraction of slow nodes")
    p.add_argument("--slowdown", type=float, default=4.0, help="a straggler's link is N x slower")
    p.add_argument("--die", type=float, default=0.0, help="fraction of nodes dying mid-pull")
    p.add_argument("--zones", type=int, default=1, help="zones (nodes round-robin)")
    p.add_argument(
        "--unpack-mbs",
        type=float,
        default=0.0,
        help=f"decompression MB/s of layer bytes (0: none; measured here {GUNZIP_BPS / MB:.0f})",
    )
    p.add_argument(
        "--host-cores",
        type=float,
        default=None,
        help="every node shares one host with this many cores (default: not modelled; "
        "--from-bench: this machine's cores)",
    )
    for name, what in (
        ("recv", "an agent fetching a piece a peer holds"),
        ("recv-cut", "an agent fetching a piece its parent was still fetching"),
        ("send", "an agent or root serving a peer"),
        ("serve", "an agent answering its runtime"),
        ("client", "the runtime's own work"),
        ("fetch", "a root fetching from the origin"),
        ("registry", "the origin registry sending"),
    ):
        p.add_argument(
            f"--cpu-{name}-ns",
            type=float,
            help=f"with --host-cores: CPU ns per byte of {what} "
            "(default: bench/cpu_cost.py's figure here at the nearest link rate and piece "
            "size measured, "
            + ", ".join(
                f"{rate:g} Mbit/s {kib} KiB {getattr(c, name.replace('-', '_')) / NS:.2f}"
                for (rate, kib), c in MEASURED.items()
            )
            + ")",
        )
    p.add_argument("--no-baseline", action="store_true", help="skip the standard pull")
    p.add_argument("--json", metavar="FILE", help="write the results as JSON")
    p.add_argument("--plot", metavar="FILE", help="write a PNG of completion-time CDFs")
    p.add_argument(
        "--from-bench",
        metavar="FILE",
        help="replay a `shoal bench` JSON's parameters and compare p95 with its shoal mode",
    )


def parse_image(spec: str) -> tuple[int, ...]:
    layers: list[int] = []
    for part in spec.replace(" ", "").split(","):
        m = re.fullmatch(r"(?:(\d+)[x*])?(\d+(?:\.\d+)?)([KMG]i?B|B)?", part, re.IGNORECASE)
        if not m:
            raise ConfigInvalidError(f"bad --image part {part!r}: want e.g. 8x512MiB")
        count = int(m.group(1) or 1)
        size = int(float(m.group(2)) * _UNITS[(m.group(3) or "").lower()])
        if count < 1 or size < 1:
            raise ConfigInvalidError(f"bad --image part {part!r}: empty")
        layers += [size] * count
    return tuple(layers)


def cpu_from(args: argparse.Namespace, rate_mbit: float, piece: int) -> CpuCosts:
    """The costs measured at the nearest link rate and piece size, with any
    ``--cpu-*-ns`` given."""
    _, base = measured_costs(rate_mbit, piece)
    given = {
        f: getattr(args, f"cpu_{f}_ns") * NS
        for f in ("recv", "recv_cut", "send", "serve", "client", "fetch", "registry")
        if getattr(args, f"cpu_{f}_ns", None) is not None
    }
    return replace(base, **given)


def lookahead_from(args: argparse.Namespace) -> float:
    """``--lookahead`` in [0, 1]: past 1 no layer after the first would ever start."""
    if not 0 <= args.lookahead <= 1:
        raise ConfigInvalidError("--lookahead is a share of a layer in [0, 1]")
    return float(args.lookahead)


def scheduler_from(args: argparse.Namespace, bench_stripes: int = 0) -> SchedulerPolicy:
    """The default scheduler policy with ``--stripes`` (or the bench's) when one is set."""
    stripes = int(args.stripes) or bench_stripes
    if stripes < 0:
        raise ConfigInvalidError("--stripes must not be negative")
    return SchedulerPolicy(stripes=stripes) if stripes else SchedulerPolicy()


def chunk_from(args: argparse.Namespace, bench: dict[str, Any] | None = None) -> int:
    """``--chunk-kib`` in bytes; without it the agents' chunk, or for a bench replay the
    bench's ``chunk_bytes`` (a bench written before chunk hashes has none: it passed
    pieces on whole, and replays as it did then)."""
    if args.chunk_kib is None:
        return CHUNK if bench is None else int(bench.get("chunk_bytes") or 0)
    if args.chunk_kib < 0:
        raise ConfigInvalidError("--chunk-kib must not be negative")
    return int(args.chunk_kib * 1024)


def params_from(args: argparse.Namespace) -> SimParams:
    if args.nodes < 1 or args.roots < 1:
        raise ConfigInvalidError("--nodes and --roots must be at least 1")
    for name in ("stragglers", "die"):
        if not 0 <= getattr(args, name) < 1:
            raise ConfigInvalidError(f"--{name} is a fraction in [0, 1)")
    return SimParams(
        nodes=args.nodes,
        roots=args.roots,
        layers=parse_image(args.image),
        link_bps=args.link_gbit * GBIT,
        origin_bps=args.origin_gbit * GBIT,
        disk_bps=args.disk_mbs * MB if args.disk_mbs > 0 else math.inf,
        piece_size=int(args.piece_mib * MIB),
        chunk_bytes=chunk_from(args),
        seed=args.seed,
        stragglers=args.stragglers,
        slowdown=args.slowdown,
        die=args.die,
        zones=args.zones,
        unpack_bps=args.unpack_mbs * MB,
        host_cores=args.host_cores or 0.0,
        cpu=cpu_from(args, args.link_gbit * 1000, int(args.piece_mib * MIB)),
        lookahead=lookahead_from(args),
        scheduler=scheduler_from(args),
    )


def simulate(p: SimParams, *, baseline: bool = True) -> dict[str, Any]:
    """Run both ways of pulling; figures as a JSON-able dict (times in s, rates in B/s)."""
    t0 = time.perf_counter()
    out = SwarmSim(p).run()
    wall = time.perf_counter() - t0
    shoal = stats(
        out.layer_done, out.dead, p.layers, p.unpack_bps, out.origin_bytes, out.origin_peak_bps
    )
    res: dict[str, Any] = {
        "params": _params_json(p),
        "bound_s": p.bound(),
        "shoal": shoal,
        "dead": sum(out.dead),
        "root_upload_copies": out.root_upload_bytes / p.image_bytes,
        "piece_transfers": out.pieces,
        "streamed_transfers": out.streamed,
        "events": out.events,
        "sim_wall_s": wall,
        "sim_end_s": out.sim_end,
    }
    if baseline:
        t1 = time.perf_counter()
        done, peak = standard_pull(p)
        alive = [False] * p.nodes
        std = stats(done, alive, p.layers, p.unpack_bps, p.nodes * float(p.image_bytes), peak)
        res["standard"] = std
        res["baseline_wall_s"] = time.perf_counter() - t1
        res["p95_reduction_pct"] = 100.0 * (1 - shoal.p95 / std.p95)
    return res


def _params_json(p: SimParams) -> dict[str, Any]:
    return {
        "nodes": p.nodes,
        "roots": p.roots,
        "layers": list(p.layers),
        "image_bytes": p.image_bytes,
        "link_gbit": p.link_bps / GBIT,
        "origin_gbit": p.origin_bps / GBIT,
        "disk_mbs": None if math.isinf(p.disk_bps) else p.disk_bps / MB,
        "piece_mib": p.piece_size / MIB,
        "chunk_bytes": p.chunk_bytes,
        "stripes": p.scheduler.stripes,
        "seed": p.seed,
        "stragglers": p.stragglers,
        "slowdown": p.slowdown,
        "die": p.die,
        "zones": p.zones,
        "unpack_mbs": p.unpack_bps / MB,
        "host_cores": p.host_cores,
        "cpu_ns_per_byte": {
            k: getattr(p.cpu, k) / NS
            for k in ("recv", "recv_cut", "send", "serve", "client", "fetch", "registry")
        },
    }


def jsonable(res: dict[str, Any]) -> dict[str, Any]:
    return {k: v.as_dict() if isinstance(v, PullStats) else v for k, v in res.items()}


def _gbit(bps: float) -> str:
    return f"{bps * 8 / 1e9:.1f} Gbit/s"


def _size(n: float) -> str:
    return f"{n / GIB:.1f} GiB" if n >= GIB else f"{n / MIB:.0f} MiB"


def print_run(p: SimParams, res: dict[str, Any]) -> None:
    shape = ", ".join(
        f"{p.layers.count(s)} x {_size(s)}" for s in sorted(set(p.layers), reverse=True)
    )
    disk = "no limit" if math.isinf(p.disk_bps) else f"{p.disk_bps / MB:.0f} MB/s"
    print(
        f"shoal sim: {p.nodes} nodes, {p.roots} root(s), image {shape} = "
        f"{_size(p.image_bytes)}, link {_gbit(p.link_bps)}, origin {_gbit(p.origin_bps)}, "
        f"disk {disk}, piece {p.piece_size / MIB:g} MiB, {p.scheduler.stripes} stripes, "
        f"seed {p.seed}"
    )
    if p.chunk_bytes:
        print(f"  agents pass a piece on {p.chunk_bytes / 1024:g} KiB at a time as it arrives")
    else:
        print("  agents pass a piece on once it is whole (store-and-forward)")
    extra = []
    if p.stragglers:
        extra.append(f"{p.stragglers:.0%} stragglers {p.slowdown:g}x slower")
    if p.die:
        extra.append(f"{p.die:.0%} die mid-pull ({res['dead']} did)")
    if p.unpack_bps:
        extra.append(f"unpack {p.unpack_bps / MB:.0f} MB/s")
    if p.host_cores:
        c = p.cpu
        extra.append(
            f"one host of {p.host_cores:g} cores; CPU ns/byte: agent in "
            f"{c.agent_in / NS:.1f} (recv {c.recv / NS:.1f} + serve {c.serve / NS:.1f} + "
            f"client {c.client / NS:.1f}; cut-through recv {c.recv_cut / NS:.1f}), send "
            f"{c.send / NS:.1f}, root fetch {c.fetch / NS:.1f}, registry {c.registry / NS:.1f}"
        )
    if extra:
        print("  " + ", ".join(extra))
    print(f"physical bound (image / min(link, disk, origin)): {res['bound_s']:.2f} s\n")
    print(
        f"{'':15}{'p50':>9}{'p95':>9}{'max':>9}{'p95/bound':>11}"
        f"{'origin bytes':>26}{'origin peak':>15}"
    )
    for name, key in (("shoal", "shoal"), ("standard pull", "standard")):
        s: PullStats | None = res.get(key)
        if s is None:
            continue
        copies = s.origin_bytes / p.image_bytes
        print(
            f"{name:15}{s.p50:8.2f}s{s.p95:8.2f}s{s.max:8.2f}s{s.p95 / res['bound_s']:10.2f}x"
            f"{_size(s.origin_bytes):>14} ({copies:7.2f} x)"
            f"{_gbit(s.origin_peak_bps):>15}"
        )
        if s.unfinished:
            print(f"{'':15}{s.unfinished} live node(s) did not finish")
    if "p95_reduction_pct" in res:
        print(f"\np95 reduction against the standard pull: {res['p95_reduction_pct']:.1f} %")
    print(
        f"root uploaded {res['root_upload_copies']:.2f} copies; "
        f"{res['piece_transfers']:,} piece transfers ({res['streamed_transfers']:,} passed on "
        f"as they came), {res['events']:,} events, "
        f"simulated in {res['sim_wall_s']:.1f} s"
    )


def reference_table(args: argparse.Namespace) -> dict[str, Any]:
    """The reference document's matrix, ours beside the published figures."""
    base = SimParams(
        nodes=args.nodes if args.nodes != 1000 else 1000,
        roots=args.roots if args.roots != 1 else 3,
        link_bps=10 * GBIT,
        origin_bps=args.origin_gbit * GBIT,
        disk_bps=PL1_200GB_BPS,
        chunk_bytes=chunk_from(args),
        seed=args.seed,
    )
    rows = []
    print(
        f"reference matrix: {base.nodes} nodes, 10 Gbit/s, {base.roots} roots, "
        f"origin {_gbit(base.origin_bps)}, disk {PL1_200GB_BPS / MB:.0f} MB/s (PL1, 200 GB), "
        f"unpack {GUNZIP_BPS / MB:.0f} MB/s (gzip -d, one core, measured here), "
        f"chunks {base.chunk_bytes >> 10} KiB"
    )
    print(
        f"{'image':13}{'piece':>7}{'bound':>8}{'ours p95':>10}{'+unpack':>9}{'published':>11}"
        f"{'ours peak':>11}{'published':>11}{'origin':>8}{'sim':>7}"
    )
    for shape, layers, pub_p95, pub_peak in REFERENCE:
        size = sum(layers)
        # about 640 pieces per node (a power of two, at least 4 MiB): ~640,000 piece
        # transfers per row, so the matrix runs in minutes, not hours
        piece = 4 * MIB
        while size / piece > 640:
            piece *= 2
        p = replace(base, layers=layers, piece_size=piece)
        t0 = time.perf_counter()
        out = SwarmSim(p).run()
        wall = time.perf_counter() - t0
        plain = stats(out.layer_done, out.dead, layers, 0.0, out.origin_bytes, out.origin_peak_bps)
        unp = stats(
            out.layer_done, out.dead, layers, GUNZIP_BPS, out.origin_bytes, out.origin_peak_bps
        )
        row = {
            "image": shape,
            "piece_mib": piece / MIB,
            "bound_s": p.bound(),
            "p95_s": plain.p95,
            "p95_unpack_s": unp.p95,
            "published_p95_s": pub_p95,
            "peak_origin_gbit": out.origin_peak_bps * 8 / 1e9,
            "published_peak_gbit": pub_peak,
            "origin_copies": out.origin_bytes / size,
            "chunk_bytes": p.chunk_bytes,
            "unfinished": plain.unfinished,
            "sim_wall_s": wall,
            "beats_published": unp.p95 < pub_p95,
        }
        rows.append(row)
        print(
            f"{shape:13}{piece / MIB:5.0f}Mi{p.bound():7.1f}s{plain.p95:9.1f}s{unp.p95:8.1f}s"
            f"{pub_p95:10.0f}s{row['peak_origin_gbit']:9.1f}Gb{pub_peak:9.1f}Gb"
            f"{row['origin_copies']:7.2f}x{wall:6.0f}s",
            flush=True,
        )
    won = sum(1 for r in rows if r["beats_published"])
    print(f"\nours (with unpack) beat the published P95 in {won} of {len(rows)} rows")
    return {"scenario": "reference-table", "gunzip_bps": GUNZIP_BPS, "rows": rows}


def run_sim(args: argparse.Namespace) -> int:
    if args.scenario == "reference-table":
        result = reference_table(args)
    elif args.from_bench:
        from shoal.sim.replay import from_bench  # it runs and prints with this module

        result = from_bench(args)
    else:
        p = params_from(args)
        res = simulate(p, baseline=not args.no_baseline)
        print_run(p, res)
        if args.plot:
            series = {"shoal": res["shoal"].times}
            if "standard" in res:
                series["standard pull"] = res["standard"].times
            plot(args.plot, f"{p.nodes} nodes, {_size(p.image_bytes)}", series, p.bound())
            print(f"plot: {args.plot}")
        result = jsonable(res)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str) + "\n")
        print(f"json: {args.json}", file=sys.stderr)
    return 0
