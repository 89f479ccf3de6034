"""The simulated root tier: schedulers, the origin fetch, and the control plane's timing.

What a real root does for an agent's download machine, with the real ``Scheduler``:
answer joins, asks for parents and hashes (a long poll: held until the hash exists),
verdicts and health probes; take report batches from each agent's real ``Outbox``;
queue the parent sets it decides unasked and hand them out with the agent's next
batch, as the control API does. Every call costs ``control_rtt`` (half each way):
the scheduler sees the request half a round trip after it left, the agent the answer
a full round trip after. With ``control_rtt`` 0 everything is instant but the batching,
which the outbox's own rules decide.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Callable
from dataclasses import replace
from typing import Protocol

from shoal.sim.network import Flow, Network
from shoal.sim.params import SimParams
from shoal.swarm import (
    Action,
    AskParents,
    Assignment,
    BlobDownload,
    BlobView,
    Have,
    Join,
    Outbox,
    PeerDead,
    RootMessage,
    Scheduler,
    SwarmError,
    piece_length,
)

#: the hash of every simulated piece: the machines only ask whether one is known
HASH = b"\x00"
#: its chunk hashes, given with it in answers to hash asks when the agents check pieces
#: by chunks (``SimParams.chunk_bytes``); with 0 the root gives none, as roots did before
CHUNKS = b"\x00"


class SimHost(Protocol):
    """What the root tier needs of the simulation (``engine.SwarmSim``)."""

    p: SimParams
    now: float
    name: list[str]
    id: dict[str, int]
    zone: list[str]
    dead: list[bool]
    root_names: list[str]
    digests: list[str]
    blob_index: dict[str, int]
    sizes: list[int]
    full: list[int]
    owner: list[int]
    counts: list[int]
    net: Network
    origin: int
    root_node: list[int]
    flows: dict[tuple[int, int, int, int], Flow]
    total_flows: int

    def at(self, t: float, fn: Callable[[], None]) -> None: ...

    def after(self, delay: float, fn: Callable[[], None]) -> None: ...

    def answer(self, a: int, b: int, event: Callable[[BlobDownload], list[Action]]) -> None: ...

    def pushed(self, a: int, mail: dict[int, Assignment]) -> None: ...

    def live_roots(self, a: int) -> set[str]: ...


class RootTier:
    def __init__(self, sim: SimHost) -> None:
        self.sim = sim
        p = sim.p
        self.rtt = p.control_rtt
        self.scheds = [
            Scheduler(p.scheduler, seed=p.seed * 1000 + k) for k in range(len(sim.root_names))
        ]
        n_blobs = len(sim.digests)
        self.have = [0] * n_blobs  # pieces the blob's root holds (verified)
        self.prefix = [0] * n_blobs  # hashes known: pieces 0..prefix-1
        self.opened = [False] * n_blobs
        self.next = [0] * n_blobs  # the root's next origin piece
        self.outboxes = [Outbox(p.download) for _ in sim.name]
        self._flush_at: dict[int, float] = {}  # agent -> time of its scheduled flush
        self._mail: dict[int, dict[int, Assignment]] = defaultdict(dict)  # agent -> blob ->
        self._hash_waiters: dict[int, list[tuple[int, int]]] = defaultdict(list)  # blob ->

    # --- the plumbing of a call ---------------------------------------------------------

    def _call(self, handle: Callable[[], Callable[[], None] | None]) -> None:
        """``handle`` runs at the root after half a round trip; the function it returns
        (the answer's delivery) runs at the agent after the other half."""

        def at_root() -> None:
            reply = handle()
            if reply is not None:
                self.sim.after(self.rtt / 2, reply)

        self.sim.after(self.rtt / 2, at_root)

    def _view(
        self, b: int, known: int, a: Assignment | None = None, *, asked: bool = False
    ) -> BlobView:
        """``asked``: an answer to a hash ask, with the chunk hashes if there are any."""
        sim = self.sim
        start = min(max(known, 0), self.prefix[b])
        n = self.prefix[b] - start
        view = BlobView(
            sim.digests[b],
            sim.sizes[b],
            sim.p.piece_size,
            start,
            (HASH,) * n,
            complete=self.have[b] == sim.full[b],
            seed=sim.root_names[sim.owner[b]],
            parents=a.parents if a is not None else (),
        )
        return replace(view, chunks=(CHUNKS,) * n) if asked and sim.p.chunk_bytes else view

    def _collect(self, r: int) -> None:
        """Unasked parent sets go to each agent's mailbox, out with its next batch."""
        sim = self.sim
        for pushed in self.scheds[r].take_updates(sim.now):
            a = sim.id[pushed.peer]
            self._mail[a][sim.blob_index[pushed.blob]] = pushed
            self._wake_flush(a)

    # --- what an agent's download asks ------------------------------------------------

    def join(self, a: int, b: int, have: int) -> None:
        sim = self.sim
        r = sim.owner[b]

        def handle() -> Callable[[], None]:
            sched = self.scheds[r]
            if not self.opened[b]:
                self.opened[b] = True
                sched.add_blob(
                    sim.digests[b], sim.sizes[b], sim.p.piece_size, sim.root_names[r], sim.now
                )
                self.origin_fetch(b)
            ans = sched.handle(Join(sim.name[a], sim.digests[b], sim.zone[a], have), sim.now)
            self._collect(r)
            view = self._view(b, 0, ans)
            root = sim.root_names[r]
            return lambda: sim.answer(a, b, lambda m: m.on_joined(root, view, sim.now))

        self._call(handle)

    def parents(self, a: int, b: int) -> None:
        sim = self.sim
        r = sim.owner[b]

        def handle() -> Callable[[], None]:
            ans = self.scheds[r].handle(AskParents(sim.name[a], sim.digests[b]), sim.now)
            self._collect(r)
            view = self._view(b, self.prefix[b], ans)
            return lambda: sim.answer(a, b, lambda m: m.on_parents_answer(view, sim.now))

        self._call(handle)

    def hashes(self, a: int, b: int, known: int) -> None:
        sim = self.sim

        def handle() -> Callable[[], None] | None:
            if self.prefix[b] > known:
                view = self._view(b, known, asked=True)
                return lambda: sim.answer(a, b, lambda m: m.on_hashes(view, sim.now))
            self._hash_waiters[b].append((a, known))  # a long poll: held until it exists
            return None

        self._call(handle)

    def verdict(self, a: int, b: int) -> None:
        sim = self.sim

        def handle() -> Callable[[], None]:
            view = self._view(b, self.prefix[b])
            return lambda: sim.answer(a, b, lambda m: m.on_verdict(view, sim.now))

        self._call(handle)

    def probe(self, a: int, b: int, root: str) -> None:
        sim = self.sim
        self._call(
            lambda: lambda: sim.answer(a, b, lambda m: m.on_probe_root(root, True, False, sim.now))
        )

    # --- reports, batched by each agent's outbox -----------------------------------------

    def report(self, a: int, b: int, msg: RootMessage) -> None:
        sim = self.sim
        root = sim.root_names[sim.owner[b]]
        box = self.outboxes[a]
        box.add(root, msg)
        t = max(box.report_due(root), sim.now)
        at = self._flush_at.get(a)
        if at is None or at > t:
            self._flush_at[a] = t
            sim.at(t, functools.partial(self._flush, a, t))

    def _wake_flush(self, a: int) -> None:
        sim = self.sim
        t = self.outboxes[a].next_deadline(sim.live_roots(a))
        if t is None:
            return
        t = max(t, sim.now)
        at = self._flush_at.get(a)
        if at is not None and at <= t:
            return
        self._flush_at[a] = t
        sim.at(t, functools.partial(self._flush, a, t))

    def _flush(self, a: int, when: float) -> None:
        sim = self.sim
        if self._flush_at.get(a) != when:
            return  # replaced by an earlier one
        del self._flush_at[a]
        if sim.dead[a]:
            return
        # ``when`` is the deadline the outbox named; the batch's clock may lag it by a
        # rounding error (events within 1e-12 s share one ``now``)
        for root, msgs in self.outboxes[a].due(max(sim.now, when), sim.live_roots(a)):
            self._call(functools.partial(self._batch, a, sim.root_names.index(root), msgs))
        self._wake_flush(a)

    def _batch(self, a: int, r: int, msgs: list[RootMessage]) -> Callable[[], None] | None:
        sim = self.sim
        sched = self.scheds[r]
        sched.seen(sim.name[a], sim.now)  # as the real root's control API does per call
        for msg in msgs:
            try:
                sched.handle(msg, sim.now)
            except SwarmError:
                pass  # a blob it dropped, a member it forgot: the real root ignores it too
        self._collect(r)
        mail = self._mail.pop(a, None)
        if not mail:
            return None
        return lambda: sim.pushed(a, mail)

    # --- the root's own fetch ---------------------------------------------------------

    def origin_fetch(self, b: int) -> None:
        """The root fetches piece after piece from the origin (one flow at a time)."""
        sim = self.sim
        i = self.next[b]
        if i < sim.counts[b]:
            self.next[b] = i + 1
            size = piece_length(sim.sizes[b], sim.p.piece_size, i)
            root = sim.root_node[b]
            sim.flows[(sim.origin, root, b, i)] = sim.net.start(
                sim.origin, root, size, sim.now, (b, i)
            )
            sim.total_flows += 1

    def landed(self, b: int, i: int) -> None:
        """The root verified and stored piece ``i`` from the origin: the next one."""
        sim = self.sim
        self.have[b] |= 1 << i
        while (self.have[b] >> self.prefix[b]) & 1:
            self.prefix[b] += 1
        r = sim.owner[b]
        self.scheds[r].handle(Have(sim.root_names[r], sim.digests[b], (i,)), sim.now)
        self._collect(r)
        waiting = self._hash_waiters.get(b)
        if waiting:
            keep = []
            for a, known in waiting:
                if self.prefix[b] > known:
                    sim.after(self.rtt / 2, functools.partial(self._hashes_to, a, b, known))
                else:
                    keep.append((a, known))
            self._hash_waiters[b] = keep
        self.origin_fetch(b)

    def _hashes_to(self, a: int, b: int, known: int) -> None:
        view = self._view(b, known, asked=True)
        self.sim.answer(a, b, lambda m: m.on_hashes(view, self.sim.now))

    def dead(self, a: int) -> None:
        """The roots notice an agent's death after their silence rule (``peer_timeout``)."""
        sim = self.sim

        def drop() -> None:
            for r, sched in enumerate(self.scheds):
                sched.handle(PeerDead(sim.name[a]), sim.now)
                self._collect(r)

        sim.after(sim.p.scheduler.peer_timeout, drop)
