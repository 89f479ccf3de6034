"""The discrete-event simulation of a pull through shoal, driving the real swarm code.

Roles as in the real system: one ``Scheduler`` per root (blobs mapped to roots by
rendezvous hashing of the digest), one ``PiecePicker`` per agent per layer, both
unchanged from ``shoal.swarm``; the network is ``network.Network``. The engine plays
the asyncio shells' part exactly as docs/swarm.md tells them to:

* a root fetches a blob from the origin when the first agent joins it, piece after
  piece (one origin flow at a time per blob), and sends ``Have`` for each;
* a ``Request`` is sent on the parent->child connection if the parent holds the piece
  (one writer per connection, as the real peer server: pieces on one connection go
  one after another, connections share links max-min fairly), queues at the parent if
  the parent is fetching that blob (cut-through: sent when the piece lands; the real
  peer server waits ``piece_wait`` for it), else is refused; ``Fetching`` is
  announced when a flow starts, ``Have`` when it lands;
* ``Cancel`` stops the flow, refuses children queued on that piece when no request for
  it is left, ``ParentFailed`` and ``NeedParents`` go to the blob's root;
* each agent fetches every layer of the image at once (``concurrent_layers`` = 0), as
  the agent does after serving the manifest, or a given number at a time, in order.

Events at the same simulated time are handled as a batch: pickers woken by the batch
are asked for requests once, and the network is settled once.
"""

from __future__ import annotations

import gc
import hashlib
import heapq
import itertools
import random
from collections import OrderedDict, defaultdict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from shoal.sim.network import Flow, Network
from shoal.sim.params import SimParams
from shoal.swarm import (
    Abandoned,
    AskParents,
    Assignment,
    Cancel,
    FailReason,
    Fetching,
    Have,
    Join,
    NeedParents,
    ParentFailed,
    PeerDead,
    PickerAction,
    PiecePicker,
    Request,
    Scheduler,
    piece_count,
    piece_length,
)

_FLOW, _TICK, _DIE = 0, 1, 2
UNREACHABLE, REFUSED = FailReason.UNREACHABLE, FailReason.REFUSED


def rendezvous(digest: str, roots: Sequence[str]) -> int:
    """Index of the root that owns ``digest``: highest hash of (root, digest) wins."""
    return max(
        range(len(roots)),
        key=lambda j: hashlib.sha256(f"{roots[j]}|{digest}".encode()).digest(),
    )


@dataclass(slots=True)
class Outcome:
    """What a run measured."""

    layer_done: list[list[float]]  #: per agent, per layer: download finished (s); inf if not
    dead: list[bool]
    origin_bytes: float
    origin_peak_bps: float
    root_upload_bytes: float
    peer_bytes: float
    sim_end: float
    events: int
    flows: int
    pieces: int = 0
    notes: list[str] = field(default_factory=list)


class SwarmSim:
    """One simulated pull of one image by ``params.nodes`` agents at time 0."""

    def __init__(self, params: SimParams) -> None:
        self.p = params
        self.rng = random.Random(params.seed)
        self.net = Network(depth=params.depth, cores=params.host_cores)
        self.now = 0.0
        self._heap: list[tuple[float, int, int, object, int]] = []
        self._seq = itertools.count()
        self.events = 0
        n = params.nodes
        link, disk = params.link_bps, params.disk_bps
        cpu = params.cpu
        self.origin = self.net.add_node(params.origin_bps, 0.0, send_cost=cpu.registry)
        self.root_names = [f"root{j}" for j in range(params.roots)]
        self.roots = [
            self.net.add_node(link, min(link, disk), send_cost=cpu.send, recv_cost=cpu.fetch)
            for _ in self.root_names
        ]
        slow = set(self.rng.sample(range(n), round(params.stragglers * n)))
        self.agents = [
            self.net.add_node(
                link / (params.slowdown if i in slow else 1.0),
                min(link, disk) / (params.slowdown if i in slow else 1.0),
                send_cost=cpu.send,
                recv_cost=cpu.agent_in,
            )
            for i in range(n)
        ]
        self.first_agent = self.agents[0] if n else 0
        self.name = ["origin", *self.root_names, *(f"n{i}" for i in range(n))]
        self.id = {nm: i for i, nm in enumerate(self.name)}
        self.zone = ["", *([""] * params.roots)] + [
            f"z{i % params.zones}" if params.zones > 1 else "" for i in range(n)
        ]
        self.is_root = [False, *([True] * params.roots), *([False] * n)]
        self.dead = [False] * len(self.name)
        # blobs
        self.digests = [
            "sha256:" + hashlib.sha256(f"{params.seed}/{j}/{s}".encode()).hexdigest()
            for j, s in enumerate(params.layers)
        ]
        self.blob_index = {d: j for j, d in enumerate(self.digests)}
        self.sizes = list(params.layers)
        self.counts = [piece_count(s, params.piece_size) for s in self.sizes]
        self.owner = [self.roots[rendezvous(d, self.root_names)] for d in self.digests]
        self.scheds = {
            r: Scheduler(params.scheduler, seed=params.seed * 1000 + k)
            for k, r in enumerate(self.roots)
        }
        self.sched_of = [self.scheds[r] for r in self.owner]  # per blob, its root's
        self.root_have = [0] * len(self.digests)
        self.root_next = [-1] * len(self.digests)  # next piece to fetch; -1 = not started
        # per agent
        self.pickers: list[dict[int, PiecePicker]] = [{} for _ in self.name]
        self.next_layer = [0] * len(self.name)
        self.layer_done = [[float("inf")] * len(self.sizes) for _ in range(n)]
        self.active: dict[tuple[int, int], PiecePicker] = {}
        # swarm graph and transfers
        self.children: dict[tuple[int, int], set[int]] = defaultdict(set)
        self.parents: dict[tuple[int, int], list[int]] = {}
        self.waiting: dict[tuple[int, int, int], list[int]] = defaultdict(list)
        self.inbound: dict[tuple[int, int, int], int] = defaultdict(int)
        self.flows: dict[tuple[int, int, int, int], Flow] = {}
        self.current: dict[tuple[int, int], Flow] = {}  # per connection, the piece on the wire
        self.conn: dict[tuple[int, int], deque[tuple[int, int]]] = defaultdict(deque)
        # pickers to ask for requests, first woken first; an OrderedDict pops its oldest
        # in O(1), where ``next(iter(dict))`` after many deletions scans them all
        self.wake: OrderedDict[tuple[int, int], None] = OrderedDict()
        self.deferred: list[tuple[int, int, int, int, FailReason]] = []
        self.cut: set[tuple[int, int, int, int]] = set()  # cut-through sends (host CPU)
        # measures
        self.origin_bytes = 0.0
        self.origin_peak = 0.0
        self.root_up = 0.0
        self.peer_bytes = 0.0
        self.pieces_moved = 0
        self.total_flows = 0
        self.remaining_agents = n
        self._ticks = 0

    # ------------------------------------------------------------------ event plumbing

    def _push(self, t: float, kind: int, obj: object, version: int = 0) -> None:
        heapq.heappush(self._heap, (t, next(self._seq), kind, obj, version))

    def _schedule(self, f: Flow) -> None:
        heapq.heappush(self._heap, (f.finish, next(self._seq), _FLOW, f, f.version))

    def run(self) -> Outcome:
        # The run makes millions of long-lived objects (flows, heap entries, piece sets)
        # and no garbage cycles: CPython's collector scanned all of them 77 times in a
        # 1,000-node run and freed nothing (~10 % of the time; more at 10,000 nodes,
        # where each scan is ten times longer). Freeze what exists, collect rarely.
        gc.collect()
        gc.freeze()
        threshold = gc.get_threshold()
        gc.set_threshold(100_000, 50, 1_000)
        try:
            return self._run()
        finally:
            gc.set_threshold(*threshold)
            gc.unfreeze()

    def _run(self) -> Outcome:
        p = self.p
        limit = p.max_time or 50 * p.bound()
        for a in self.agents:
            for _ in range(p.concurrent_layers or len(self.sizes)):
                self._start_layer(a)
        if p.die > 0:
            victims = self.rng.sample(self.agents, round(p.die * len(self.agents)))
            for v in victims:
                self._push(self.rng.uniform(0.1, 0.9) * p.bound(), _DIE, v)
        self._push(p.tick_s(), _TICK, None)
        self._drain()
        heap = self._heap
        while heap and self.remaining_agents > 0:
            t = heap[0][0]
            if t > limit:
                break
            self.now = t
            while heap and heap[0][0] <= t + 1e-12:
                _, _, kind, obj, version = heapq.heappop(heap)
                self.events += 1
                if kind == _FLOW:
                    f = obj
                    assert isinstance(f, Flow)
                    if f.version == version:
                        self._flow_done(f)
                elif kind == _TICK:
                    self._tick()
                else:
                    assert isinstance(obj, int)
                    self._die(obj)
            self._drain()
        return Outcome(
            layer_done=self.layer_done,
            dead=[self.dead[a] for a in self.agents],
            origin_bytes=self.origin_bytes,
            origin_peak_bps=self.origin_peak,
            root_upload_bytes=self.root_up,
            peer_bytes=self.peer_bytes,
            sim_end=self.now,
            events=self.events,
            flows=self.total_flows,
            pieces=self.pieces_moved,
        )

    def _drain(self) -> None:
        """Wake pickers touched by this batch, then settle the network once."""
        while self.wake or self.deferred:
            while self.deferred:
                c, b, parent, i, why = self.deferred.pop()
                pk = self.pickers[c].get(b)
                if pk is not None and not self.dead[c]:
                    self._act(c, b, pk.on_failed(self.name[parent], i, self.now, why))
            wake, pickers, dead, now = self.wake, self.pickers, self.dead, self.now
            while wake:
                (c, b), _ = wake.popitem(last=False)
                pk = pickers[c][b]
                if not pk.done and not dead[c]:
                    acts = pk.requests(now)
                    if acts:
                        self._act(c, b, acts)
        origin_dirty = self.origin in self.net._dirty_up
        self.net.settle(self.now, self._schedule)
        if origin_dirty:
            self.origin_peak = max(self.origin_peak, self.net.rate_out(self.origin))

    # ------------------------------------------------------------------ agents

    def _start_layer(self, a: int) -> None:
        b = self.next_layer[a]
        if b >= len(self.sizes):
            return
        self.next_layer[a] = b + 1
        pk = PiecePicker(
            self.name[a], self.digests[b], self.counts[b], self.p.picker, seed=a * 131 + b
        )
        self.pickers[a][b] = pk
        self.active[(a, b)] = pk
        root = self.owner[b]
        sched = self.scheds[root]
        if self.root_next[b] < 0:
            sched.add_blob(self.digests[b], self.sizes[b], self.p.piece_size, self.name[root], 0.0)
            self.root_next[b] = 0
            self._origin_fetch(b)
        ans = sched.handle(Join(self.name[a], self.digests[b], self.zone[a]), self.now)
        assert ans is not None
        self._assign(a, b, ans)

    def _assign(self, a: int, b: int, ans: Assignment) -> None:
        new = [self.id[o.peer] for o in ans.parents]
        for old in self.parents.get((a, b), ()):
            self.children[(old, b)].discard(a)
        for x in new:
            self.children[(x, b)].add(a)
        self.parents[(a, b)] = new
        pk = self.pickers[a][b]
        self._act(a, b, pk.on_parents(ans.parents, self.now))
        self.wake[(a, b)] = None
        self._updates(b)

    def _updates(self, b: int) -> None:
        """Deliver the root's unsolicited parent updates (a tree changed under them)."""
        for ans in self.scheds[self.owner[b]].take_updates(self.now):
            a = self.id[ans.peer]
            blob = self.blob_index[ans.blob]
            if not self.dead[a] and blob in self.pickers[a]:
                self._assign(a, blob, ans)

    def _act(self, c: int, b: int, actions: list[PickerAction]) -> None:
        for act in actions:
            t = type(act)
            if t is Request:
                assert isinstance(act, Request)
                self._request(c, b, self.id[act.parent], act.index)
            elif t is Cancel:
                assert isinstance(act, Cancel)
                self._cancel(c, b, self.id[act.parent], act.index)
            elif t is ParentFailed:
                assert isinstance(act, ParentFailed)
                self.scheds[self.owner[b]].handle(act, self.now)
                self._updates(b)
            elif t is NeedParents:
                ans = self.scheds[self.owner[b]].handle(
                    AskParents(self.name[c], self.digests[b]), self.now
                )
                assert ans is not None
                self._assign(c, b, ans)

    def _holds(self, x: int, b: int, i: int) -> bool:
        if self.is_root[x]:
            return bool(self.root_have[b] >> i & 1)
        pk = self.pickers[x].get(b)
        return pk is not None and bool(pk.have >> i & 1)

    def _request(self, c: int, b: int, parent: int, i: int) -> None:
        if self.dead[parent]:
            self.deferred.append((c, b, parent, i, UNREACHABLE))
        elif self._holds(parent, b, i):
            self._send(parent, c, b, i)
        elif self.is_root[parent] or b in self.pickers[parent]:
            # the peer server holds a read of a piece of a blob it is fetching until the
            # piece lands (``piece_wait``, 30 s, as the picker's ``queue_timeout``)
            self.waiting[(parent, b, i)].append(c)
        else:
            self.deferred.append((c, b, parent, i, REFUSED))

    def _send(self, src: int, dst: int, b: int, i: int) -> None:
        """Queue piece ``i`` on the connection ``src -> dst``: one writer per connection
        (as the real peer server), so pieces on it go one after another."""
        if (src, dst) in self.current:
            self.conn[(src, dst)].append((b, i))
        else:
            self._start_flow(src, dst, b, i)

    def _send_waited(self, src: int, dst: int, b: int, i: int) -> None:
        """Send a piece whose request waited for it at ``src`` (cut-through)."""
        if self.p.host_cores:
            self.cut.add((src, dst, b, i))  # its receiver pays ``cpu.recv_cut``
        self._send(src, dst, b, i)

    def _start_flow(self, src: int, dst: int, b: int, i: int) -> None:
        size = piece_length(self.sizes[b], self.p.piece_size, i)
        cost = None
        if self.p.host_cores:
            cpu, key = self.p.cpu, (src, dst, b, i)
            cost = cpu.send + (cpu.agent_in_cut if key in self.cut else cpu.agent_in)
            self.cut.discard(key)
        now = self.now
        f = self.net.start(src, dst, size, now, (b, i), cost)
        self.total_flows += 1
        self.flows[(src, dst, b, i)] = f
        self.current[(src, dst)] = f
        self.inbound[(dst, b, i)] += 1
        nm = self.name[dst]
        pickers = self.pickers
        pickers[dst][b].on_started(self.name[src], i, now)
        self.sched_of[b].handle(Fetching(nm, self.digests[b], (i,)), now)
        kids = self.children.get((dst, b))
        if kids:
            wake = self.wake
            for ch in kids:
                if pickers[ch][b].on_fetching(nm, i):
                    wake[(ch, b)] = None

    def _end_flow(self, f: Flow) -> None:
        b, i = f.payload
        src, dst = f.src, f.dst
        del self.flows[(src, dst, b, i)]
        key = (dst, b, i)
        inbound = self.inbound
        left = inbound[key] - 1
        if left:
            inbound[key] = left
        else:
            del inbound[key]
        self.net.stop(f, self.now)
        link = (src, dst)
        if self.current.get(link) is f:
            del self.current[link]
            q = self.conn.get(link)
            if q:
                nb, ni = q.popleft()
                if not q:
                    del self.conn[link]
                if not self.dead[src] and not self.dead[dst]:
                    self._start_flow(src, dst, nb, ni)

    def _cancel(self, c: int, b: int, parent: int, i: int) -> None:
        f = self.flows.get((parent, c, b, i))
        q = self.conn.get((parent, c))
        if f is not None:
            self._end_flow(f)
        elif q and (b, i) in q:
            q.remove((b, i))
            self.cut.discard((parent, c, b, i))
        else:
            queue = self.waiting.get((parent, b, i))
            if queue and c in queue:
                queue.remove(c)
        pk = self.pickers[c][b]
        if not (pk.requested >> i & 1) and not (pk.have >> i & 1):
            self.scheds[self.owner[b]].handle(
                Abandoned(self.name[c], self.digests[b], (i,)), self.now
            )
            for w in self.waiting.pop((c, b, i), []):
                self.deferred.append((w, b, c, i, REFUSED))

    def _flow_done(self, f: Flow) -> None:
        b, i = f.payload
        src, dst = f.src, f.dst
        self._end_flow(f)
        if src == self.origin:
            self.origin_bytes += f.size
            self._root_landed(dst, b, i)
            return
        self.pieces_moved += 1
        if self.is_root[src]:
            self.root_up += f.size
        else:
            self.peer_bytes += f.size
        pk = self.pickers[dst][b]
        was = pk.have >> i & 1
        acts = pk.on_piece(self.name[src], i, self.now)
        if acts:
            self._act(dst, b, acts)
        if not was and pk.have >> i & 1:
            self._landed(dst, b, i)
        self.wake[(dst, b)] = None

    def _landed(self, a: int, b: int, i: int) -> None:
        nm = self.name[a]
        self.sched_of[b].handle(Have(nm, self.digests[b], (i,)), self.now)
        waiters = self.waiting.pop((a, b, i), None)
        if waiters:
            for w in waiters:
                if not self.dead[w]:
                    self._send_waited(a, w, b, i)
        pickers = self.pickers
        kids = self.children.get((a, b))
        if kids:
            wake = self.wake
            for ch in kids:
                if pickers[ch][b].on_have(nm, i):
                    wake[(ch, b)] = None
        pk = pickers[a][b]
        if pk.done:
            del self.active[(a, b)]
            self.layer_done[a - self.first_agent][b] = self.now
            self._start_layer(a)
            if self._finished(a):
                self.remaining_agents -= 1

    # ------------------------------------------------------------------ roots, faults

    def _origin_fetch(self, b: int) -> None:
        i = self.root_next[b]
        if i < self.counts[b]:
            self.root_next[b] = i + 1
            size = piece_length(self.sizes[b], self.p.piece_size, i)
            f = self.net.start(self.origin, self.owner[b], size, self.now, (b, i))
            self.total_flows += 1
            self.flows[(self.origin, self.owner[b], b, i)] = f

    def _root_landed(self, r: int, b: int, i: int) -> None:
        self.root_have[b] |= 1 << i
        nm = self.name[r]
        self.scheds[r].handle(Have(nm, self.digests[b], (i,)), self.now)
        self._origin_fetch(b)
        for w in self.waiting.pop((r, b, i), []):
            if not self.dead[w]:
                self._send_waited(r, w, b, i)
        for ch in self.children.get((r, b), ()):
            if self.pickers[ch][b].on_have(nm, i):
                self.wake[(ch, b)] = None

    def _tick(self) -> None:
        now = self.now
        self._ticks += 1
        # idle pickers are woken about once a second: that is how often they may ask
        # for parents (refresh_interval); stall checks run every tick
        every = max(1, round(self.p.picker.refresh_interval / self.p.tick_s()))
        wake_idle = self._ticks % every == 0
        for (c, b), pk in list(self.active.items()):
            if pk.in_flight:
                acts = pk.on_timer(now)
                if acts:
                    self._act(c, b, acts)
            if wake_idle and pk.idle:
                self.wake[(c, b)] = None
        if self.active:
            self._push(now + self.p.tick_s(), _TICK, None)

    def _finished(self, a: int) -> bool:
        return self.next_layer[a] >= len(self.sizes) and all(
            pk.done for pk in self.pickers[a].values()
        )

    def _die(self, a: int) -> None:
        if self.dead[a] or self._finished(a):
            return  # finished before its time came: it lives
        self.dead[a] = True
        self.remaining_agents -= 1
        for key in [k for k in self.conn if a in k]:
            for b, i in self.conn.pop(key):
                if key[0] == a:
                    self.deferred.append((key[1], b, a, i, UNREACHABLE))
        for f in list(self.net.ups[a]):
            b, i = f.payload
            self._end_flow(f)
            self.deferred.append((f.dst, b, a, i, UNREACHABLE))
        for f in list(self.net.downs[a]):
            self._end_flow(f)
        for wkey in [k for k in self.waiting if k[0] == a]:
            for w in self.waiting.pop(wkey):
                self.deferred.append((w, wkey[1], a, wkey[2], UNREACHABLE))
        for b in list(self.pickers[a]):
            self.active.pop((a, b), None)
        for r in self.roots:
            self.scheds[r].handle(PeerDead(self.name[a]), self.now)
        for b in range(len(self.digests)):
            self._updates(b)
