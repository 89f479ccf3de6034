"""The discrete-event simulation of a pull through shoal, driving the real swarm code.

Roles as in the real system, with the real classes: every agent runs one
``BlobDownload`` per layer (the same machine the agent's asyncio driver runs), which
drives a ``PiecePicker``; the roots run ``Scheduler``s behind the control plane of
``roots.RootTier`` (joins, asks, long-polled hashes, verdicts, reports batched by each
agent's ``Outbox``, pushed parent sets delivered with the next batch). The engine plays
the drivers' part: it carries out the machines' actions on the network model
(``network.Network``) and feeds back what happened, as the agent's driver does:

* a ``Request`` is sent on the parent->child connection if the parent holds the piece
  (one writer per connection, as the real peer server: pieces on one connection go one
  after another, connections share links max-min fairly), waits at the parent if the
  parent is fetching that blob (``cutthrough.py``: sent when the piece lands, or from
  an agent once its first chunk is in, passed on as it comes), else is refused
  (``FetchError.NOT_FOUND``);
* a flow's first byte is ``on_started``, its last ``on_received``; ``Store`` succeeds at
  once and the piece counts as held from then on (``on_stored``), unless the sender is
  one of the nodes that send bad bytes (``SimParams.bad``): then the hash fails;
* ``Cancel`` stops the flow; children queued on a piece nobody here fetches any more are
  refused, children it was passing the piece on to see their connection fail;
* an agent hears of its parents only what a real agent hears: the offers in the root's
  answers and pushes (no per-piece news from parents);
* ``ProbePeer`` is answered after a round trip when the parent lives, after the ping
  timeout when it is dead.

Events at the same simulated time are handled as a batch and the network is settled
once per batch.
"""

from __future__ import annotations

import functools
import gc
import hashlib
import heapq
import itertools
import random
from collections import defaultdict, deque
from collections.abc import Callable

from shoal.sim.cutthrough import CutThrough
from shoal.sim.network import Flow, Network
from shoal.sim.params import SimParams
from shoal.sim.report import Outcome
from shoal.sim.roots import RootTier
from shoal.swarm import (
    Abandoned,
    Action,
    Assignment,
    BlobDownload,
    Cancel,
    Fail,
    FetchError,
    Fetching,
    FetchOrigin,
    Have,
    JoinRoot,
    ParentFailed,
    ParentOffer,
    ProbePeer,
    ProbeRoot,
    Request,
    RequestHashes,
    RequestParents,
    RequestVerdict,
    Store,
    full_mask,
    piece_count,
    piece_length,
    rank_roots,
)

_FLOW, _TICK, _DIE, _CALL, _CHUNK = 0, 1, 2, 3, 4
UNREACHABLE, NOT_FOUND = FetchError.UNREACHABLE, FetchError.NOT_FOUND


def _parents(m: BlobDownload, *, offers: tuple[ParentOffer, ...], now: float) -> list[Action]:
    return m.on_parents(offers, now)


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
        liars = set(self.rng.sample(range(n), round(params.bad * n))) if params.bad else set()
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
        #: the pieces these nodes send fail their hash at the receiver (``SimParams.bad``)
        self.bad = [False] * (1 + params.roots) + [i in liars for i in range(n)]
        # blobs: each belongs to the root that production's rendezvous hashing names
        self.digests = [
            "sha256:" + hashlib.sha256(f"{params.seed}/{j}/{s}".encode()).hexdigest()
            for j, s in enumerate(params.layers)
        ]
        self.blob_index = {d: j for j, d in enumerate(self.digests)}
        self.sizes = list(params.layers)
        self.counts = [piece_count(s, params.piece_size) for s in self.sizes]
        self.full = [full_mask(c) for c in self.counts]
        self.ranked = [rank_roots(d, self.root_names) for d in self.digests]
        self.owner = [self.root_names.index(r[0]) for r in self.ranked]  # index in roots
        self.root_node = [self.roots[o] for o in self.owner]  # per blob, its root's node
        self.tier = RootTier(self)
        # per agent
        self.dl: list[dict[int, BlobDownload]] = [{} for _ in self.name]
        self.next_layer = [0] * len(self.name)
        self.layer_done = [[float("inf")] * len(self.sizes) for _ in range(n)]
        self.active: dict[tuple[int, int], BlobDownload] = {}
        # transfers
        self.cut = CutThrough(self, params.chunk_bytes)  # reads waiting at parents
        self.flows: dict[tuple[int, int, int, int], Flow] = {}
        self.current: dict[tuple[int, int], Flow] = {}  # per connection, the piece on the wire
        self.conn: dict[tuple[int, int], deque[tuple[int, int]]] = defaultdict(deque)
        self._on_rate = self.cut.scheduled if params.chunk_bytes else self.schedule
        # measures
        self.origin_bytes = 0.0
        self.origin_peak = 0.0
        self.root_up = 0.0
        self.peer_bytes = 0.0
        self.pieces_moved = 0
        self.total_flows = 0
        self.remaining_agents = n
        self.notes: list[str] = []

    # ------------------------------------------------------------------ event plumbing

    def at(self, t: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._heap, (t, next(self._seq), _CALL, fn, 0))

    def after(self, delay: float, fn: Callable[[], None]) -> None:
        if delay <= 0:
            fn()
        else:
            self.at(self.now + delay, fn)

    def _push(self, t: float, kind: int, obj: object, version: int = 0) -> None:
        heapq.heappush(self._heap, (t, next(self._seq), kind, obj, version))

    def schedule(self, f: Flow) -> None:
        """``f``'s completion time changed: put it on the heap."""
        heapq.heappush(self._heap, (f.finish, next(self._seq), _FLOW, f, f.version))

    def push_chunk(self, t: float, f: Flow) -> None:
        """``f`` will have brought its first chunk at ``t`` (unless its rate changes)."""
        heapq.heappush(self._heap, (t, next(self._seq), _CHUNK, f, f.version))

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
        at_once = 1 if p.lookahead > 0 else p.concurrent_layers or len(self.sizes)
        for a in self.agents:
            for _ in range(at_once):
                self._start_layer(a)
        if p.die > 0:
            victims = self.rng.sample(self.agents, round(p.die * len(self.agents)))
            for v in victims:
                self._push(self.rng.uniform(0.1, 0.9) * p.bound(), _DIE, v)
        self._push(p.tick_s(), _TICK, None)
        self._settle()
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
                    assert isinstance(obj, Flow)
                    if obj.version == version:
                        self._flow_done(obj)
                elif kind == _CALL:
                    obj()  # type: ignore[operator]
                elif kind == _TICK:
                    self._tick()
                elif kind == _CHUNK:
                    assert isinstance(obj, Flow)
                    if obj.version == version:
                        self.cut.bytes_in(obj)
                else:
                    assert isinstance(obj, int)
                    self._die(obj)
            self._settle()
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
            streamed=self.cut.streamed,
            notes=self.notes,
        )

    def _settle(self) -> None:
        origin_dirty = self.origin in self.net._dirty_up
        self.net.settle(self.now, self._on_rate)
        if origin_dirty:
            self.origin_peak = max(self.origin_peak, self.net.rate_out(self.origin))

    # ------------------------------------------------------------------ the drivers' part

    def _start_layer(self, a: int) -> None:
        b = self.next_layer[a]
        if b >= len(self.sizes):
            return
        self.next_layer[a] = b + 1
        m = BlobDownload(
            self.name[a],
            self.digests[b],
            self.ranked[b],
            policy=self.p.download,
            picker=self.p.picker,
            root_timeout=self.p.root_timeout,
            seed=a * 131 + b,
        )
        self.dl[a][b] = m
        self.active[(a, b)] = m
        self._act(a, b, m.start(self.now))

    def answer(self, a: int, b: int, event: Callable[[BlobDownload], list[Action]]) -> None:
        """Deliver a root's answer to agent ``a``'s download of ``b`` (if it still runs)."""
        m = self.dl[a].get(b)
        if m is not None and not self.dead[a] and not m.ended:
            self._act(a, b, event(m))
            if (a, b) in self.cut.unhashed:  # it may have brought hashes a read waits for
                self.cut.hashes_in(a, b)

    def pushed(self, a: int, mail: dict[int, Assignment]) -> None:
        for b, ans in mail.items():
            offers = ans.parents
            self.answer(a, b, functools.partial(_parents, offers=offers, now=self.now))

    def live_roots(self, a: int) -> set[str]:
        return {m.root for m in self.dl[a].values() if m.root and not m.ended}

    def _act(self, c: int, b: int, actions: list[Action]) -> None:
        tier = self.tier
        for act in actions:
            t = type(act)
            if t is Request:
                assert isinstance(act, Request)
                self._request(c, b, self.id[act.parent], act.index)
            elif t is Have or t is Fetching or t is Abandoned or t is ParentFailed:
                assert isinstance(act, Have | Fetching | Abandoned | ParentFailed)
                tier.report(c, b, act)
            elif t is Store:
                assert isinstance(act, Store)
                self._stored(c, b, act.parent, act.index)
            elif t is Cancel:
                assert isinstance(act, Cancel)
                self._cancel(c, b, self.id[act.parent], act.index)
            elif t is ProbePeer:
                assert isinstance(act, ProbePeer)
                self._probe_peer(c, b, act.parent)
            elif t is RequestHashes:
                assert isinstance(act, RequestHashes)
                tier.hashes(c, b, act.known)
            elif t is RequestParents:
                tier.parents(c, b)
            elif t is JoinRoot:
                assert isinstance(act, JoinRoot)
                tier.join(c, b, act.have)
            elif t is RequestVerdict:
                tier.verdict(c, b)
            elif t is ProbeRoot:
                assert isinstance(act, ProbeRoot)
                tier.probe(c, b, act.root)
            elif t is FetchOrigin or t is Fail:
                self.notes.append(f"{self.name[c]} {self.digests[b][:19]}: {act!r}")

    def _probe_peer(self, c: int, b: int, parent: str) -> None:
        alive = not self.dead[self.id[parent]]
        delay = self.p.control_rtt if alive else self.p.download.ping_timeout
        self.after(
            delay, lambda: self.answer(c, b, lambda m: m.on_probe_peer(parent, alive, self.now))
        )

    def holds(self, x: int, b: int, i: int) -> bool:
        if self.is_root[x]:
            return bool(self.tier.have[b] >> i & 1)
        m = self.dl[x].get(b)
        return m is not None and m.picker is not None and bool(m.picker.have >> i & 1)

    def _request(self, c: int, b: int, parent: int, i: int) -> None:
        if self.dead[parent]:
            self.failed_later(c, b, parent, i, UNREACHABLE)
        elif self.holds(parent, b, i):
            self.send(parent, c, b, i)
        elif self.is_root[parent] or b in self.dl[parent]:
            # the peer server holds the read (``piece_wait``): ``cutthrough.py``
            self.cut.read(c, b, parent, i)
        else:
            self.failed_later(c, b, parent, i, NOT_FOUND)

    def failed_later(self, c: int, b: int, parent: int, i: int, why: FetchError) -> None:
        """A fetch fails: the answer (or the reset) reaches the child a moment later, as
        it does over a real connection; never inside the action that asked."""
        nm = self.name[parent]
        self.at(
            self.now, lambda: self.answer(c, b, lambda m: m.on_fetch_failed(nm, i, why, self.now))
        )

    def send(self, src: int, dst: int, b: int, i: int) -> None:
        """Queue piece ``i`` on the connection ``src -> dst``: one writer per connection
        (as the real peer server), so pieces on it go one after another."""
        if (src, dst) in self.current:
            self.conn[(src, dst)].append((b, i))
        else:
            self._start_flow(src, dst, b, i)

    def _start_flow(self, src: int, dst: int, b: int, i: int) -> bool:
        """Start the piece on its connection; ``False``: a streamed one cannot yet."""
        go, up = self.cut.upstream(src, dst, b, i)
        if not go:
            return False
        size = piece_length(self.sizes[b], self.p.piece_size, i)
        cost = None
        if self.p.host_cores:
            cpu = self.p.cpu
            cut = self.cut.charged_cut((src, dst, b, i))
            cost = cpu.send + (cpu.agent_in_cut if cut else cpu.agent_in)
        f = self.net.start(src, dst, size, self.now, (b, i), cost, up)
        self.total_flows += 1
        self.flows[(src, dst, b, i)] = f
        self.current[(src, dst)] = f
        self.cut.started(f)
        m = self.dl[dst].get(b)
        if m is not None:
            self._act(dst, b, m.on_started(self.name[src], i, self.now))
        return True

    def end_flow(self, f: Flow, done: bool = False) -> None:
        """``f`` is over: ``done`` (all bytes in), or cut short."""
        b, i = f.payload
        src, dst = f.src, f.dst
        del self.flows[(src, dst, b, i)]
        kids = None if done or not f.kids else list(f.kids)
        self.net.stop(f, self.now)
        if src != self.origin:
            self.cut.ended(f, kids)
        link = (src, dst)
        if self.current.get(link) is f:
            del self.current[link]
            q = self.conn.get(link)
            while q:
                nb, ni = q.popleft()
                if not q:
                    del self.conn[link]
                if self.dead[src] or self.dead[dst] or self._start_flow(src, dst, nb, ni):
                    break

    def _cancel(self, c: int, b: int, parent: int, i: int) -> None:
        f = self.flows.get((parent, c, b, i))
        q = self.conn.get((parent, c))
        if f is not None:
            self.end_flow(f)
        elif q and (b, i) in q:
            q.remove((b, i))
            self.cut.charged_cut((parent, c, b, i))
        else:
            self.cut.withdraw(c, b, parent, i)
        m = self.dl[c][b]
        pk = m.picker
        if pk is not None and not (pk.requested >> i & 1) and not (pk.have >> i & 1):
            # nobody here fetches it now: children queued on it are refused
            self.cut.refuse(c, b, i, FetchError.PIECE_MISSING)

    def _flow_done(self, f: Flow) -> None:
        b, i = f.payload
        src, dst = f.src, f.dst
        self.end_flow(f, done=True)
        if src == self.origin:
            self.origin_bytes += f.size
            self.tier.landed(b, i)  # and fetches the next
            self.cut.landed(dst, b, i)
            return
        self.pieces_moved += 1
        if self.is_root[src]:
            self.root_up += f.size
        else:
            self.peer_bytes += f.size
        m = self.dl[dst].get(b)
        if m is not None:
            self._act(dst, b, m.on_received(self.name[src], i, self.now))

    def _stored(self, a: int, b: int, parent: str, i: int) -> None:
        m = self.dl[a][b]
        pk = m.picker
        assert pk is not None
        was = pk.have >> i & 1
        ok = not self.bad[self.id[parent]]
        self._act(a, b, m.on_stored(parent, i, ok, self.now))
        if was or not pk.have >> i & 1:
            return
        if (
            self.p.lookahead > 0
            and b == self.next_layer[a] - 1
            and pk.have.bit_count() >= self.p.lookahead * self.counts[b]
        ):
            self._start_layer(a)
        self.cut.landed(a, b, i)
        if pk.done:
            self.active.pop((a, b), None)
            self.layer_done[a - self.first_agent][b] = self.now
            if not self.p.lookahead:  # with one, the share above started the next
                self._start_layer(a)
            if self._finished(a):
                self.remaining_agents -= 1

    # ------------------------------------------------------------------ timers, faults

    def _tick(self) -> None:
        now = self.now
        for (c, b), m in list(self.active.items()):
            acts = m.tick(now)
            if acts:
                self._act(c, b, acts)
        if self.active:
            self._push(now + self.p.tick_s(), _TICK, None)

    def _finished(self, a: int) -> bool:
        return self.next_layer[a] >= len(self.sizes) and all(
            m.picker is not None and m.picker.done for m in self.dl[a].values()
        )

    def _die(self, a: int) -> None:
        if self.dead[a] or self._finished(a):
            return  # finished before its time came: it lives
        self.dead[a] = True
        self.remaining_agents -= 1
        # connections reset: every child with bytes or reads on this node hears it
        for key in [k for k in self.conn if a in k]:
            for b, i in self.conn.pop(key):
                if key[0] == a:
                    self.failed_later(key[1], b, a, i, UNREACHABLE)
        for f in list(self.net.ups[a]):
            b, i = f.payload
            self.end_flow(f)
            self.failed_later(f.dst, b, a, i, UNREACHABLE)
        for f in list(self.net.downs[a]):
            self.end_flow(f)
        for _, wb, wi in [k for k in self.cut.waiting if k[0] == a]:
            self.cut.refuse(a, wb, wi, UNREACHABLE)
        for b in list(self.dl[a]):
            self.active.pop((a, b), None)
        self.tier.dead(a)
