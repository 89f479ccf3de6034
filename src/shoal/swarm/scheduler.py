"""The root's scheduler: who is in each blob's swarm, what each holds, whom to fetch from.

One ``Scheduler`` per root; one ``BlobSwarm`` per blob the root owns. It is a pure state
machine: messages in (``handle(msg, now)``), ``Assignment`` decisions out, time passed
in, randomness from a seeded ``random.Random`` so that the simulator is reproducible.

Goal: keep every node's upload busy. A fixed tree with fan-out f caps each level at 1/f
of a link; a mesh in which every agent has a handful of parents that hold (or are
fetching) pieces it lacks, and every agent has about as many children as parents,
lets each upload run near full rate, so a node finishes near S/B plus a few piece times.

Rules (the scoring table ``SCORE`` below holds the weights):

1. Candidates for a requester: a random sample of the blob's members (half from the
   requester's zone when it has one), its current parents, and the seed. Never itself,
   a peer it banned (bad piece) or reported slow within the ban time, a peer banned
   globally (bad pieces reported by ``global_ban_reporters`` different agents), or a dead
   peer. Sampling bounds the cost of a decision at 10,000 members.
2. Score = ``useful`` x fraction of ``useful_enough`` pieces the candidate holds or is
   fetching that the requester lacks (fetching counts half: cut-through, served when it
   lands) + ``free`` x share of its upload slots not taken by children (over every blob:
   one uplink) + ``zone`` if in the requester's zone - ``slow`` per recent slow report.
   A candidate with nothing useful and no free slot is not offered. The best
   ``parents`` are offered, best first.
3. The seed (the root; its pieces arrive from the origin) is offered to a requester only
   when some stripe has no child, or when nothing else offered is useful to the
   requester and the seed has fewer than ``seed_slots`` children; and then only for a
   *stripe* of the pieces (piece index mod ``stripes``): each piece leaves the root
   about once and the swarm spreads it. A new child of the seed takes the least-held
   stripe; a child that asks again (it is starved) also takes every stripe no child
   holds, so every stripe stays covered as children come, go and die (BitTorrent's
   super-seeding, made deterministic). This keeps the origin read once and the root's
   uplink carrying new bytes, not copies.
4. A member that holds every piece stops being a child (its parents' slots are freed)
   and stays a parent until it leaves.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from shoal.swarm.errors import BlobNotJoinedError, PeerNotJoinedError
from shoal.swarm.messages import (
    Abandoned,
    AskParents,
    Assignment,
    FailReason,
    Fetching,
    Have,
    Join,
    Leave,
    Load,
    ParentFailed,
    ParentOffer,
    PeerDead,
    PeerId,
    RootMessage,
)
from shoal.swarm.pieces import full_mask, mask_of, piece_count

#: weights of the parent score (rule 2)
SCORE: dict[str, float] = {"useful": 2.0, "free": 1.5, "zone": 1.0, "slow": 1.0}


@dataclass(frozen=True, slots=True)
class SchedulerPolicy:
    parents: int = 6  #: parents per assignment
    sample: int = 32  #: random candidates scored per assignment
    child_slots: int = 6  #: children an agent serves before it counts as loaded
    seed_slots: int = 8  #: cap on the seed's children per blob (starved agents past the stripes)
    stripes: int = 4  #: the seed's pieces are split into this many stripes
    useful_enough: int = 8  #: pieces that make a parent fully useful (score 1)
    ban_seconds: float = 60.0  #: a parent reported bad or slow is not offered again to that agent
    slow_memory: float = 30.0  #: seconds a slow report counts against a parent
    global_ban_reporters: int = 2  #: distinct agents reporting bad pieces ban a parent for all


class _Peer:
    """A node, over every blob: its uplink is one, so load and reputation are here."""

    __slots__ = (
        "bad_reporters",
        "banned_until",
        "children",
        "dead",
        "id",
        "slow",
        "uploads",
        "zone",
    )

    def __init__(self, peer: PeerId, zone: str) -> None:
        self.id = peer
        self.zone = zone
        self.children = 0  # agents, over all blobs, that have this peer as a parent
        self.uploads = 0  # last reported active uploads
        self.slow: list[float] = []  # times of slow reports
        self.bad_reporters: set[PeerId] = set()
        self.banned_until = 0.0
        self.dead = False


class _Member:
    """A peer in one blob's swarm."""

    __slots__ = ("bans", "fetching", "have", "parents", "peer", "seed_stripes")

    def __init__(self, peer: _Peer, have: int) -> None:
        self.peer = peer
        self.have = have
        self.fetching = 0
        self.parents: list[PeerId] = []
        self.bans: dict[PeerId, float] = {}  # parent -> until
        self.seed_stripes = 0  # stripes it holds from the seed, as a bit set of stripe numbers


class BlobSwarm:
    """One blob's swarm as the root sees it; created by ``Scheduler.add_blob``."""

    def __init__(
        self, blob: str, size: int, piece_size: int, seed: _Member, policy: SchedulerPolicy
    ) -> None:
        self.blob = blob
        self.size = size
        self.piece_size = piece_size
        self.count = piece_count(size, piece_size)
        self.full = full_mask(self.count)
        self.seed = seed
        self.policy = policy
        self.members: dict[PeerId, _Member] = {seed.peer.id: seed}
        self._order: list[PeerId] = []  # agents, for O(1) random sampling
        self._pos: dict[PeerId, int] = {}
        self._zones: dict[str, list[PeerId]] = {}
        self._zpos: dict[PeerId, int] = {}
        self.stripe_holders = [0] * policy.stripes
        self.stripe_masks = [
            mask_of(range(s, self.count, policy.stripes)) for s in range(policy.stripes)
        ]
        self.seed_children = 0
        self.complete = 0

    def __repr__(self) -> str:
        fetched = self.seed.have.bit_count()
        return (
            f"<BlobSwarm {self.blob[:19]} [{self.count} pieces, seed has {fetched} | "
            f"{len(self._order)} agents, {self.complete} complete | "
            f"seed children {self.seed_children}, stripes held {self.stripe_holders}]>"
        )

    # membership bookkeeping -------------------------------------------------------

    def _add(self, m: _Member) -> None:
        pid = m.peer.id
        self.members[pid] = m
        self._pos[pid] = len(self._order)
        self._order.append(pid)
        if m.peer.zone:
            zl = self._zones.setdefault(m.peer.zone, [])
            self._zpos[pid] = len(zl)
            zl.append(pid)

    def _remove(self, pid: PeerId) -> _Member:
        m = self.members.pop(pid)
        for lst, pos in ((self._order, self._pos), (self._zones.get(m.peer.zone), self._zpos)):
            if lst is None or pid not in pos:
                continue
            i = pos.pop(pid)
            last = lst.pop()
            if last != pid:
                lst[i] = last
                pos[last] = i
        return m

    def agents(self) -> int:
        return len(self._order)


class Scheduler:
    """Every blob swarm of one root. Feed it messages with ``handle``; act on answers."""

    def __init__(self, policy: SchedulerPolicy | None = None, *, seed: int = 0) -> None:
        self.policy = policy or SchedulerPolicy()
        self._rng = random.Random(seed)
        self._peers: dict[PeerId, _Peer] = {}
        self._blobs: dict[str, BlobSwarm] = {}
        self._handlers: dict[type, Callable[..., Assignment | None]] = {
            Join: self._join,
            AskParents: self._ask,
            Have: self._have,
            Fetching: self._fetching,
            Abandoned: self._abandoned,
            Load: self._load,
            ParentFailed: self._failed,
            Leave: self._leave,
            PeerDead: self._dead,
        }

    def __repr__(self) -> str:
        return f"<Scheduler [{len(self._blobs)} blobs, {len(self._peers)} peers]>"

    # API ----------------------------------------------------------------------------

    def add_blob(
        self, blob: str, size: int, piece_size: int, seed: PeerId, now: float, *, zone: str = ""
    ) -> BlobSwarm:
        """Open ``blob``'s swarm with ``seed`` (this root) as the member that fetches it all.

        The seed counts as fetching every piece from the start, so agents may queue
        requests on it at once (cut-through); send ``Have(seed, ...)`` as each piece is
        verified. Idempotent for a blob already open.
        """
        if blob in self._blobs:
            return self._blobs[blob]
        sm = _Member(self._peer(seed, zone), 0)
        swarm = BlobSwarm(blob, size, piece_size, sm, self.policy)
        sm.fetching = swarm.full
        self._blobs[blob] = swarm
        return swarm

    def drop_blob(self, blob: str) -> None:
        swarm = self._blobs.pop(blob, None)
        if swarm is not None:
            for m in swarm.members.values():
                self._release_parents(swarm, m)

    def swarm(self, blob: str) -> BlobSwarm:
        try:
            return self._blobs[blob]
        except KeyError:
            raise BlobNotJoinedError(f"no swarm for {blob}") from None

    def handle(self, msg: RootMessage, now: float) -> Assignment | None:
        """Apply one message; ``Join`` and ``AskParents`` answer with an ``Assignment``."""
        return self._handlers[type(msg)](msg, now)

    # handlers -----------------------------------------------------------------------

    def _join(self, msg: Join, now: float) -> Assignment:
        swarm = self.swarm(msg.blob)
        m = swarm.members.get(msg.peer)
        if m is None:
            peer = self._peer(msg.peer, msg.zone)
            peer.dead = False
            m = _Member(peer, msg.have & swarm.full)
            swarm._add(m)
            if m.have == swarm.full:
                swarm.complete += 1
        else:
            m.have |= msg.have & swarm.full
        return self._assign(swarm, m, now, msg.want)

    def _ask(self, msg: AskParents, now: float) -> Assignment:
        swarm = self.swarm(msg.blob)
        return self._assign(swarm, self._member(swarm, msg.peer), now, msg.want)

    def _have(self, msg: Have, now: float) -> None:
        swarm = self.swarm(msg.blob)
        m = self._member(swarm, msg.peer)
        was = m.have == swarm.full
        bits = mask_of(msg.indices) & swarm.full
        m.have |= bits
        m.fetching &= ~bits
        if not was and m.have == swarm.full and m is not swarm.seed:
            swarm.complete += 1
            self._release_parents(swarm, m)

    def _fetching(self, msg: Fetching, now: float) -> None:
        swarm = self.swarm(msg.blob)
        m = self._member(swarm, msg.peer)
        m.fetching |= mask_of(msg.indices) & swarm.full & ~m.have

    def _abandoned(self, msg: Abandoned, now: float) -> None:
        swarm = self.swarm(msg.blob)
        self._member(swarm, msg.peer).fetching &= ~mask_of(msg.indices)

    def _load(self, msg: Load, now: float) -> None:
        peer = self._peers.get(msg.peer)
        if peer is not None:
            peer.uploads = msg.uploads

    def _failed(self, msg: ParentFailed, now: float) -> None:
        swarm = self.swarm(msg.blob)
        m = self._member(swarm, msg.peer)
        m.bans[msg.parent] = now + self.policy.ban_seconds
        parent = self._peers.get(msg.parent)
        if parent is None:
            return
        if msg.reason is FailReason.BAD_PIECE:
            parent.bad_reporters.add(msg.peer)
            if len(parent.bad_reporters) >= self.policy.global_ban_reporters:
                parent.banned_until = now + self.policy.ban_seconds
                parent.bad_reporters.clear()
        elif msg.reason is FailReason.SLOW:
            parent.slow.append(now)
        if msg.parent in m.parents:
            m.parents.remove(msg.parent)
            self._unlink(swarm, m, msg.parent)

    def _leave(self, msg: Leave, now: float) -> None:
        swarm = self._blobs.get(msg.blob)
        if swarm is not None and msg.peer in swarm.members and msg.peer != swarm.seed.peer.id:
            self._drop_member(swarm, msg.peer)

    def _dead(self, msg: PeerDead, now: float) -> None:
        peer = self._peers.get(msg.peer)
        if peer is None:
            return
        peer.dead = True
        for swarm in self._blobs.values():
            if msg.peer in swarm.members and msg.peer != swarm.seed.peer.id:
                self._drop_member(swarm, msg.peer)

    # internals ----------------------------------------------------------------------

    def _peer(self, pid: PeerId, zone: str) -> _Peer:
        peer = self._peers.get(pid)
        if peer is None:
            peer = self._peers[pid] = _Peer(pid, zone)
        elif zone:
            peer.zone = zone
        return peer

    def _member(self, swarm: BlobSwarm, pid: PeerId) -> _Member:
        m = swarm.members.get(pid)
        if m is None:
            raise PeerNotJoinedError(f"{pid} has not joined {swarm.blob}")
        return m

    def _drop_member(self, swarm: BlobSwarm, pid: PeerId) -> None:
        m = swarm._remove(pid)
        if m.have == swarm.full:
            swarm.complete -= 1
        self._release_parents(swarm, m)

    def _release_parents(self, swarm: BlobSwarm, m: _Member) -> None:
        for p in m.parents:
            self._unlink(swarm, m, p)
        m.parents = []

    def _unlink(self, swarm: BlobSwarm, child: _Member, parent: PeerId) -> None:
        peer = self._peers.get(parent)
        if peer is not None and peer.children > 0:
            peer.children -= 1
        if parent == swarm.seed.peer.id:
            swarm.seed_children -= 1
            for s in range(self.policy.stripes):
                if child.seed_stripes >> s & 1:
                    swarm.stripe_holders[s] -= 1
            child.seed_stripes = 0

    def _usable(self, peer: _Peer, m: _Member, now: float) -> bool:
        if peer.dead or peer.banned_until > now:
            return False
        until = m.bans.get(peer.id)
        if until is None:
            return True
        if until > now:
            return False
        del m.bans[peer.id]
        return True

    def _score(self, m: _Member, c: _Member, now: float) -> float:
        lacks = ~m.have
        useful = (c.have & lacks).bit_count() + 0.5 * (c.fetching & ~c.have & lacks).bit_count()
        peer = c.peer
        load = max(peer.children, peer.uploads) / self.policy.child_slots
        free = max(0.0, 1.0 - load)
        if useful == 0 and free == 0.0:
            return -1.0
        if peer.slow:
            horizon = now - self.policy.slow_memory
            peer.slow = [t for t in peer.slow if t > horizon]
        return (
            SCORE["useful"] * min(1.0, useful / self.policy.useful_enough)
            + SCORE["free"] * free
            + (SCORE["zone"] if peer.zone and peer.zone == m.peer.zone else 0.0)
            - SCORE["slow"] * len(peer.slow)
        )

    def _candidates(self, swarm: BlobSwarm, m: _Member) -> set[PeerId]:
        k = self.policy.sample
        out: set[PeerId] = set(m.parents)
        zone = m.peer.zone
        if zone and zone in swarm._zones:
            zl = swarm._zones[zone]
            out.update(zl if len(zl) <= k // 2 else self._rng.sample(zl, k // 2))
            k -= k // 2
        order = swarm._order
        out.update(order if len(order) <= k else self._rng.sample(order, k))
        out.discard(m.peer.id)
        return out

    def _assign(self, swarm: BlobSwarm, m: _Member, now: float, want: int) -> Assignment:
        want = want or self.policy.parents
        seed_id = swarm.seed.peer.id
        if m is swarm.seed or m.have == swarm.full:
            return Assignment(m.peer.id, swarm.blob, ())
        scored: list[tuple[float, PeerId]] = []
        for pid in self._candidates(swarm, m):
            c = swarm.members.get(pid)
            if c is None or pid == seed_id or not self._usable(c.peer, m, now):
                continue
            s = self._score(m, c, now)
            if s >= 0.0:
                scored.append((s + self._rng.random() * 1e-3, pid))
        scored.sort(reverse=True)
        chosen = [pid for _, pid in scored[: want - 1 if want > 1 else want]]
        # the seed: keep it if already a parent; add it if it has a free slot or the
        # requester would otherwise have nothing to fetch (rule 3)
        has_seed = seed_id in m.parents
        lacks = ~m.have
        others_useful = any(
            (swarm.members[p].have | swarm.members[p].fetching) & lacks for p in chosen
        )
        if has_seed:
            self._take_stripes(swarm, m, unheld_only=True)
        elif self._usable(swarm.seed.peer, m, now) and (
            0 in swarm.stripe_holders
            or (not others_useful and swarm.seed_children < self.policy.seed_slots)
        ):
            has_seed = True
            self._take_stripes(swarm, m, unheld_only=False)
            swarm.seed_children += 1
            swarm.seed.peer.children += 1
        if not has_seed and len(scored) > len(chosen):
            chosen.append(scored[len(chosen)][1])
        # re-link: children counts follow the new parent set
        old = set(m.parents)
        new = set(chosen)
        for p in old - new - {seed_id}:
            self._unlink(swarm, m, p)
        for p in new - old:
            self._peers[p].children += 1
        m.parents = [*chosen, seed_id] if has_seed else chosen
        offers = [self._offer(swarm, swarm.members[p]) for p in chosen]
        if has_seed:
            only = 0
            for s in range(self.policy.stripes):
                if m.seed_stripes >> s & 1:
                    only |= swarm.stripe_masks[s]
            seed = swarm.seed
            offers.append(
                ParentOffer(
                    seed.peer.id, seed.peer.zone, seed.have & only, seed.fetching & only, only
                )
            )
        return Assignment(m.peer.id, swarm.blob, tuple(offers))

    def _take_stripes(self, swarm: BlobSwarm, m: _Member, *, unheld_only: bool) -> None:
        holders = swarm.stripe_holders
        if unheld_only:
            take = [s for s, h in enumerate(holders) if h == 0]
        else:
            take = [min(range(len(holders)), key=holders.__getitem__)]
        for s in take:
            holders[s] += 1
            m.seed_stripes |= 1 << s

    @staticmethod
    def _offer(swarm: BlobSwarm, c: _Member) -> ParentOffer:
        return ParentOffer(c.peer.id, c.peer.zone, c.have, c.fetching)
