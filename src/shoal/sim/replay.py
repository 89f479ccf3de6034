"""``shoal sim --from-bench FILE``: a real ``shoal bench`` run's parameters, replayed.

The bench JSON gives the nodes, roots, link and origin rates (scaled by its measured
``tcp_goodput``), the layers, the piece size its roots chose and, since the agents pass
pieces on by chunks, their chunk (``options.chunk_bytes``; a bench written before has
none and replays store-and-forward, as the figures published from it were computed).
The replay's p95 is printed beside the measured one for the ``shoal`` and ``direct``
modes; nothing in it is fitted to the bench being predicted (docs/sim.md).
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from shoal.cache import choose_piece_size
from shoal.sim.main import (
    chunk_from,
    cpu_from,
    jsonable,
    lookahead_from,
    print_run,
    scheduler_from,
    simulate,
)
from shoal.sim.params import MIB, SimParams, measured_costs


def _per_layer(data: dict[str, Any], options: dict[str, Any]) -> int:
    total = data.get("layer_bytes")
    if total:
        return int(total) // int(options["layers"])
    return int(options["layer_mib"] * MIB)


def from_bench(args: argparse.Namespace) -> dict[str, Any]:
    """Replay a real benchmark's parameters; compare our p95 with its shoal mode's.

    ``shoal bench`` runs every node, root and client on one machine, so the replay
    shares one host's cores among all the simulated nodes (``--host-cores``, default
    this machine's, where the bench ran) at the measured CPU costs per byte; the
    prediction with the links alone is printed beside it. Nothing here is fitted to the
    benchmark being predicted.
    """
    data = json.loads(Path(args.from_bench).read_text())
    o = data["options"]
    goodput = float(data.get("tcp_goodput", 1.0))
    cores = args.host_cores if args.host_cores is not None else float(os.cpu_count() or 1)
    # the bench's ``layer_bytes`` is all layers together (tar+gzip framing included)
    layer = _per_layer(data, o)
    if "piece_bytes" in o:  # what the bench's roots cut the layers into
        piece = int(o["piece_bytes"])
    elif "piece_kib" not in o:  # a bench from before --piece-kib: the agents' 4 MiB default
        piece = int(args.piece_mib * MIB)
    elif int(o["piece_kib"]):  # the size it set
        piece = choose_piece_size(layer, int(o["piece_kib"]) * 1024)
    else:  # shoal's choice by blob size then: at least 1 MiB before 2026-12-02
        piece = max(choose_piece_size(layer), MIB)
    p = SimParams(
        nodes=int(o["nodes"]),
        roots=int(o.get("roots", 1)),
        layers=(layer,) * int(o["layers"]),
        link_bps=o["rate_mbit"] * 1e6 / 8 * goodput,
        origin_bps=o["origin_rate_mbit"] * 1e6 / 8 * goodput,
        piece_size=piece,
        chunk_bytes=chunk_from(args, o),
        seed=args.seed,
        host_cores=cores,
        cpu=cpu_from(args, float(o["rate_mbit"]), piece),
        lookahead=lookahead_from(args),
        scheduler=scheduler_from(args, int(o.get("stripes", 0))),
    )
    (at, kib), _ = measured_costs(float(o["rate_mbit"]), piece)
    print(
        f"CPU per byte: bench/cpu_cost.py's figures at {at:g} Mbit/s in {kib} KiB pieces "
        "(docs/sim.md)"
    )
    res = simulate(p)
    print_run(p, res)
    links = simulate(replace(p, host_cores=0.0)) if cores else res
    out: dict[str, Any] = {
        "bench": args.from_bench,
        "cpu_costs_measured_at_mbit": at,
        "cpu_costs_measured_at_piece_kib": kib,
        "sim": jsonable(res),
        "links_only": jsonable(links),
        "compared": [],
    }
    print()
    keys = {"shoal": "shoal", "direct": "standard"}
    rows = [m for m in data.get("modes", []) if m.get("mode") in keys]
    for mode in keys:
        if not any(m["mode"] == mode for m in rows):
            pred = res[keys[mode]].p95
            print(f"{mode}: simulated p95 {pred:.2f} s; the bench JSON has no {mode} result")
    for m in rows:
        mode, real = m["mode"], m.get("p95_s")
        pred, bare = res[keys[mode]].p95, links[keys[mode]].p95
        depth = m.get("queue_ms")
        where = f"{mode}" + (f" at {depth:g} ms queues" if depth is not None else "")
        what = f"simulated p95 {pred:.2f} s"
        if cores:
            what += f" (links alone: {bare:.2f} s)"
        if not real:
            print(f"{where}: {what}; the bench did not finish")
            continue
        err = (pred - real) / real
        print(f"{where}: {what}, measured {real:.2f} s ({err:+.0%})")
        out["compared"].append(
            {
                "mode": mode,
                "queue_ms": depth,
                "measured_p95_s": real,
                "simulated_p95_s": pred,
                "links_only_p95_s": bare,
                "error": err,
                "error_links_only": (bare - real) / real,
            }
        )
        out.setdefault(f"{mode}_error", err)
        out.setdefault(f"{mode}_error_links_only", (bare - real) / real)
    return out
