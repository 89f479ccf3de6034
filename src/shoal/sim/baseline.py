"""The standard pull: every node fetches every layer from the origin itself.

Same network model as the swarm run (``network.Network``), same stragglers; containerd's
``max_concurrent_downloads`` (3) layers at a time per node, in manifest order, one
connection per layer. The origin's egress is shared max-min fairly among every
connection, so with N nodes each gets about origin/(3N) per layer. With a host CPU
(``host_cores``) the runtime's own cost per byte (``cpu.client``) and the registry's
(``cpu.registry``) are charged, as in the swarm run.
"""

from __future__ import annotations

import heapq
import itertools
import random

from shoal.sim.network import Flow, Network
from shoal.sim.params import SimParams


def standard_pull(params: SimParams, *, concurrent: int = 3) -> tuple[list[list[float]], float]:
    """Per node, per layer: download finished (s); and the origin's peak egress (bytes/s)."""
    p = params
    rng = random.Random(p.seed)  # the same stragglers as the swarm run
    n = p.nodes
    slow = set(rng.sample(range(n), round(p.stragglers * n)))
    net = Network(depth=p.depth, cores=p.host_cores)
    origin = net.add_node(p.origin_bps, 0.0, send_cost=p.cpu.registry)
    nodes = [
        net.add_node(
            p.link_bps / (p.slowdown if i in slow else 1.0),
            min(p.link_bps, p.disk_bps) / (p.slowdown if i in slow else 1.0),
            recv_cost=p.cpu.client,  # the runtime pulls from the origin itself
        )
        for i in range(n)
    ]
    done = [[float("inf")] * len(p.layers) for _ in range(n)]
    nxt = [0] * n
    heap: list[tuple[float, int, Flow, int]] = []
    seq = itertools.count()

    def schedule(f: Flow) -> None:
        heapq.heappush(heap, (f.finish, next(seq), f, f.version))

    def start(i: int, now: float) -> None:
        j = nxt[i]
        if j < len(p.layers):
            nxt[i] = j + 1
            net.start(origin, nodes[i], p.layers[j], now, (i, j))

    now = 0.0
    for i in range(n):
        for _ in range(concurrent):
            start(i, now)
    peak = 0.0
    net.settle(now, schedule)
    peak = net.rate_out(origin)
    while heap:
        t = heap[0][0]
        now = t
        while heap and heap[0][0] <= t * (1 + 1e-12) + 1e-12:
            _, _, f, version = heapq.heappop(heap)
            if f.version != version:
                continue
            i, j = f.payload
            net.stop(f, now)
            done[i][j] = now
            start(i, now)
        net.settle(now, schedule)
        peak = max(peak, net.rate_out(origin))
    return done, peak
