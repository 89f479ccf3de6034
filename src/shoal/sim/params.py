"""What a simulation run is made of: the cluster, the image, the policies.

Units: bytes, bytes per second, seconds. The CLI speaks Gbit/s and MB/s and converts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from shoal.swarm import DownloadPolicy, PickerPolicy, SchedulerPolicy

GBIT = 1e9 / 8  # bytes/s in one Gbit/s
MB = 1e6
MIB = 1 << 20
GIB = 1 << 30
NS = 1e-9  # seconds in a nanosecond: CPU costs are given in ns per byte
CHUNK = 64 << 10  #: the agents' chunk: a sha256 per 64 KiB of each piece


@dataclass(frozen=True, slots=True)
class CpuCosts:
    """CPU seconds per byte of each part of a pull (only used with ``host_cores``).

    The figures are measurements, not fits: ``bench/cpu_cost.py`` on this machine, at
    the benchmark's shaped links and piece size. They depend on the link rate (a slow
    link delivers fewer bytes per event-loop wake-up), so :data:`MEASURED` keeps one set
    per rate measured and :func:`measured_costs` picks the nearest; docs/sim.md has
    every run. A faster agent is a new measurement, not new code: rerun the script and
    pass the figures (``shoal sim --cpu-recv-ns ...``) or update :data:`MEASURED`.
    The defaults are the 100 Mbit/s set.
    """

    recv: float = 9.11 * NS  #: an agent fetches a piece a peer holds, verifies, stores it
    #: the same when the request waited at a parent still fetching the piece (cut-through)
    recv_cut: float = 10.13 * NS
    send: float = 2.23 * NS  #: an agent or root serves a piece to a peer
    serve: float = 0.74 * NS  #: an agent answers its runtime from the piece store
    client: float = 9.21 * NS  #: the runtime (skopeo) receives, verifies, writes a layer
    fetch: float = 10.56 * NS  #: a root fetches a piece from the origin, verifies, stores it
    registry: float = 1.94 * NS  #: the origin registry sends a byte

    @property
    def agent_in(self) -> float:
        """An agent's cost per byte it receives: fetch, serve, and its runtime's work."""
        return self.recv + self.serve + self.client

    @property
    def agent_in_cut(self) -> float:
        """The same for a piece whose request waited at its parent (cut-through)."""
        return self.recv_cut + self.serve + self.client


def _ns(**figures: float) -> CpuCosts:
    return CpuCosts(**{k: v * NS for k, v in figures.items()})


#: (link Mbit/s, piece KiB) -> the costs measured there by ``bench/cpu_cost.py
#: --rate-mbit R --layers 4 --layer-mib 16 --piece-kib K --repeat 3`` (medians):
#: 100 Mbit/s on 2026-12-01 (commit 9f24b90), 25 Mbit/s on 2026-12-02 (commit 54b960a,
#: both piece sizes in one sitting) when the automatic size of these layers went from
#: 1 MiB to 512 KiB
MEASURED: dict[tuple[float, int], CpuCosts] = {
    (25.0, 1024): _ns(
        recv=9.55, recv_cut=9.98, send=4.54, serve=1.92, client=5.86, fetch=11.32, registry=2.09
    ),
    (25.0, 512): _ns(
        recv=11.10, recv_cut=13.88, send=6.18, serve=2.07, client=5.81, fetch=13.35, registry=1.79
    ),
    (100.0, 1024): _ns(
        recv=9.11, recv_cut=10.13, send=2.23, serve=0.74, client=9.21, fetch=10.56, registry=1.94
    ),
}


def measured_costs(rate_mbit: float, piece: int) -> tuple[tuple[float, int], CpuCosts]:
    """The costs measured nearest ``rate_mbit``, then nearest the piece size (bytes),
    both by ratio; and where they were measured (Mbit/s, KiB)."""

    def off(a: float, b: float) -> float:
        return abs(math.log(a / max(b, 1e-9)))

    rate = min({r for r, _ in MEASURED}, key=lambda r: off(r, rate_mbit))
    kib = min((k for r, k in MEASURED if r == rate), key=lambda k: off(k * 1024, piece))
    return (rate, kib), MEASURED[(rate, kib)]


@dataclass(frozen=True, slots=True)
class SimParams:
    nodes: int = 1000  #: agents pulling at once
    roots: int = 1  #: root replicas; blobs map to them by rendezvous hashing
    layers: tuple[int, ...] = (512 * MIB,) * 8  #: layer (blob) sizes, bytes, in pull order
    link_bps: float = 10 * GBIT  #: every node's and root's link, each direction, bytes/s
    origin_bps: float = 10 * GBIT  #: the origin registry's egress, bytes/s
    disk_bps: float = math.inf  #: write speed of every node's disk, bytes/s
    piece_size: int = 4 * MIB  #: bytes per piece
    #: bytes an agent verifies at once and may pass on while it still receives the
    #: piece (the agent's 64 KiB chunk hashes, ``cutthrough.py``); 0 = store-and-forward,
    #: a piece passed on only once whole (every agent before chunk hashes)
    chunk_bytes: int = CHUNK
    seed: int = 1  #: random seed: the same seed gives the same run
    #: layers an agent fetches at once; 0 = every layer of the manifest (the agent
    #: joins all its swarms when it serves the manifest; see docs/swarm.md)
    concurrent_layers: int = 0
    #: > 0: an agent starts its first layer, then each next one once this share of the
    #: one before it is stored (the agent's ``agent.sequence.LOOKAHEAD``); 0 = not used
    lookahead: float = 0.0
    stragglers: float = 0.0  #: fraction of nodes whose links run slower
    slowdown: float = 4.0  #: a straggler's link is this many times slower
    die: float = 0.0  #: fraction of nodes that die mid-pull
    #: fraction of nodes that send bad bytes: every piece they serve fails its hash
    bad: float = 0.0
    unpack_bps: float = 0.0  #: decompression rate, bytes of layer per s; 0 = not modelled
    zones: int = 1  #: zones, nodes spread round-robin
    #: seconds between picker timer checks; 0 = the bound / 200, at least 50 ms (the
    #: stall floor is 500 ms; a fixed 50 ms tick made long runs tick 10^8 pickers)
    tick: float = 0.0
    #: network model recompute depth (see network.py): 2 also refills the links of the
    #: touched links' neighbours; 1 is ~30 % cheaper but leaves rates stale for seconds
    #: when events are sparse (disk-bound, 32 MiB pieces: 2.9x the bound at 1,000 nodes
    #: against 1.01x with 2, and stalls reported on healthy parents)
    depth: int = 2
    max_time: float = 0.0  #: stop here (simulated s); 0 = 50 x the physical bound
    #: host CPU (network.py): every node shares this many cores, as ``shoal bench``'s
    #: nodes share one machine; 0 = CPU not modelled (each node its own machine)
    host_cores: float = 0.0
    cpu: CpuCosts = field(default_factory=lambda: CpuCosts())
    picker: PickerPolicy = field(default_factory=PickerPolicy)
    scheduler: SchedulerPolicy = field(default_factory=SchedulerPolicy)
    download: DownloadPolicy = field(default_factory=DownloadPolicy)
    #: seconds of one control call to a root and back (the scheduler sees a request half
    #: of it after it left); 0 = instant, only the outbox's batching delays reports
    control_rtt: float = 0.0
    #: ``P2PConfig.rootTimeout``: seconds a doubted root may stay silent
    root_timeout: float = 5.0

    @property
    def image_bytes(self) -> int:
        return sum(self.layers)

    def tick_s(self) -> float:
        """At most 1 s: a download that hears nothing for longer thinks it was stopped."""
        return self.tick or min(max(0.05, self.bound() / 200), 1.0)

    def bound(self) -> float:
        """Physical lower bound on any node's pull time (no decompression).

        Every node must receive every byte through its link and disk; every byte must
        leave the origin at least once.
        """
        s = self.image_bytes
        return max(s / min(self.link_bps, self.disk_bps), s / self.origin_bps)
