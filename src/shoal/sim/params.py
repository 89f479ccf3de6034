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


@dataclass(frozen=True, slots=True)
class CpuCosts:
    """CPU seconds per byte of each part of a pull (only used with ``host_cores``).

    Defaults: ``bench/cpu_cost.py --rate-mbit 100 --piece-kib 1024 --repeat 3`` on this
    machine (the benchmark's shaped links; the agent as of commit 31100af, which picks
    1 MiB pieces for the bench's 16 MiB layers); docs/sim.md has every run, and the
    older agent's figures. A faster agent is a new measurement, not new code: pass the
    new figures (``shoal sim --cpu-recv-ns ...``).
    """

    recv: float = 7.50 * NS  #: an agent fetches a piece a peer holds, verifies, stores it
    #: the same when the request waited at a parent still fetching the piece (cut-through)
    recv_cut: float = 5.84 * NS
    send: float = 2.41 * NS  #: an agent or root serves a piece to a peer
    serve: float = 0.47 * NS  #: an agent answers its runtime from the piece store
    client: float = 5.27 * NS  #: the runtime (skopeo) receives, verifies, writes a layer
    fetch: float = 6.01 * NS  #: a root fetches a piece from the origin, verifies, stores it
    registry: float = 0.89 * NS  #: the origin registry sends a byte

    @property
    def agent_in(self) -> float:
        """An agent's cost per byte it receives: fetch, serve, and its runtime's work."""
        return self.recv + self.serve + self.client

    @property
    def agent_in_cut(self) -> float:
        """The same for a piece whose request waited at its parent (cut-through)."""
        return self.recv_cut + self.serve + self.client


@dataclass(frozen=True, slots=True)
class SimParams:
    nodes: int = 1000  #: agents pulling at once
    roots: int = 1  #: root replicas; blobs map to them by rendezvous hashing
    layers: tuple[int, ...] = (512 * MIB,) * 8  #: layer (blob) sizes, bytes, in pull order
    link_bps: float = 10 * GBIT  #: every node's and root's link, each direction, bytes/s
    origin_bps: float = 10 * GBIT  #: the origin registry's egress, bytes/s
    disk_bps: float = math.inf  #: write speed of every node's disk, bytes/s
    piece_size: int = 4 * MIB  #: bytes per piece
    seed: int = 1  #: random seed: the same seed gives the same run
    #: layers an agent fetches at once; 0 = every layer of the manifest (the agent
    #: joins all its swarms when it serves the manifest; see docs/swarm.md)
    concurrent_layers: int = 0
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
