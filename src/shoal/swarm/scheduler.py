"""The root's scheduler: who is in each blob's swarm, what each holds, whom to fetch from.

One ``Scheduler`` per root; one ``BlobSwarm`` per blob the root owns. It is a pure state
machine: messages in (``handle(msg, now)``), ``Assignment`` decisions out (the answer to
``Join``/``AskParents``, plus unsolicited updates for other agents in ``take_updates()``),
time passed in, randomness from a seeded ``random.Random`` so the simulator reproduces.

The goal is that every node's upload stays busy. A fixed tree with fan-out f caps each
level at B/f; a random mesh wastes uplink when the pieces a node holds are not the ones
its children want (simulated here: 1.3-1.8x the bound at 20-100 nodes). So the scheduler
builds a *striped forest* (SplitStream's idea) and keeps a small mesh beside it:

1. The blob's pieces are split into ``stripes`` stripes (piece index mod ``stripes``).
   Each agent gets a *home* stripe (the least populated one in its zone, then overall)
   and, for every
   stripe, exactly one *stripe parent* that sends it that stripe's pieces.
2. An agent is an interior node of its home stripe's tree only: it has ``stripes`` child
   slots there (so its uplink carries ``stripes`` x B/``stripes`` = B) and is a leaf of
   every other tree (its downlink takes ``stripes`` x B/``stripes`` = B). The seed (the
   root) takes ``seed_fanout`` child per stripe, so its uplink carries each piece about
   once: new bytes, not copies, and the origin read once.
3. A stripe parent is the shallowest interior node of that stripe with a free slot
   (a heap by depth fills trees breadth first), preferring the requester's zone (if
   at most one level deeper); never itself, a dead peer, a peer banned globally or
   by the requester. With no interior node yet, the seed stands in (``provisional``);
   when the stripe's first interior nodes join, provisional children move under them
   and get an update (``take_updates``). A child re-parented after a failure that finds
   no slot becomes a fifth child of a healthy interior node instead (the seed's uplink
   must carry new pieces), and moves to the next free slot that appears. An interior
   node takes the place of a leaf that sits higher than any free slot and the leaf
   moves under it (update), so interior nodes stay at the top and a tree is about
   log_stripes(n) deep.
4. Beside the stripe parents each agent gets ``spares`` mesh parents (``spare=True`` in
   the offer): scored by the table ``SCORE`` (pieces it holds or fetches that the
   requester lacks, free upload, same zone, minus recent slow reports), picked from a
   random sample of ``sample`` members so a decision costs the same at 10,000 members.
   The picker asks a spare only for pieces no stripe parent can give: spares cover a
   slow or broken tree without stealing its uplink.
5. A parent reported bad or unreachable, or dead, or leaving: its tree children get
   new stripe parents (updates). (5b) A parent reported slow swaps places with a node
   that has no children in its own tree, which takes over the slow one's children; the
   slow one gets no children while the report is fresh (``slow_memory``). A bad piece
   bans a parent for the reporter; bad pieces from ``global_ban_reporters`` agents ban
   it for all, for ``ban_seconds``.
6. An agent that holds every piece frees its tree slots (parents' slots reopen) and
   stays a parent until it leaves.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable

from shoal.config import SchedulerPolicy
from shoal.swarm.errors import BlobNotJoinedError, PeerNotJoinedError
from shoal.swarm.membership import BlobSwarm, Member, PeerState
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
from shoal.swarm.pieces import mask_of

#: weights of the spare-parent score (rule 4)
SCORE: dict[str, float] = {"useful": 2.0, "free": 1.5, "zone": 1.0, "slow": 1.0}


class Scheduler:
    """Every blob swarm of one root. Feed it messages with ``handle``; act on answers."""

    def __init__(self, policy: SchedulerPolicy | None = None, *, seed: int = 0) -> None:
        self.policy = policy or SchedulerPolicy()
        self._rng = random.Random(seed)
        self._peers: dict[PeerId, PeerState] = {}
        self._blobs: dict[str, BlobSwarm] = {}
        self._outbox: dict[tuple[PeerId, str], None] = {}
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
        return (
            f"<Scheduler [{len(self._blobs)} blobs, {len(self._peers)} peers, "
            f"{len(self._outbox)} updates queued]>"
        )

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
        sm = Member(self._peer(seed, zone), 0, self.policy.stripes)
        swarm = BlobSwarm(blob, size, piece_size, sm, self.policy.stripes)
        sm.fetching = swarm.full
        self._blobs[blob] = swarm
        return swarm

    def drop_blob(self, blob: str) -> None:
        swarm = self._blobs.pop(blob, None)
        if swarm is not None:
            for m in swarm.members.values():
                self._release_spares(m)

    def swarm(self, blob: str) -> BlobSwarm:
        try:
            return self._blobs[blob]
        except KeyError:
            raise BlobNotJoinedError(f"no swarm for {blob}") from None

    def handle(self, msg: RootMessage, now: float) -> Assignment | None:
        """Apply one message; ``Join`` and ``AskParents`` answer with an ``Assignment``."""
        return self._handlers[type(msg)](msg, now)

    def take_updates(self, now: float) -> list[Assignment]:
        """New parent sets for agents that did not ask (their tree changed): push them."""
        out = []
        for pid, blob in self._outbox:
            swarm = self._blobs.get(blob)
            m = swarm.members.get(pid) if swarm is not None else None
            if swarm is not None and m is not None and m.have != swarm.full:
                out.append(self._offers(swarm, m))
        self._outbox.clear()
        return out

    # handlers -----------------------------------------------------------------------

    def _join(self, msg: Join, now: float) -> Assignment:
        swarm = self.swarm(msg.blob)
        m = swarm.members.get(msg.peer)
        if m is None:
            peer = self._peer(msg.peer, msg.zone)
            peer.dead = False
            m = Member(peer, msg.have & swarm.full, self.policy.stripes)
            swarm.add(m)
            if m.have == swarm.full:
                swarm.complete += 1
                return Assignment(m.peer.id, swarm.blob, ())
            self._place(swarm, m, now)
        else:
            m.have |= msg.have & swarm.full
        return self._assign(swarm, m, now)

    def _ask(self, msg: AskParents, now: float) -> Assignment:
        swarm = self.swarm(msg.blob)
        return self._assign(swarm, self._member(swarm, msg.peer), now)

    def _have(self, msg: Have, now: float) -> None:
        swarm = self.swarm(msg.blob)
        m = self._member(swarm, msg.peer)
        was = m.have == swarm.full
        bits = mask_of(msg.indices) & swarm.full
        m.have |= bits
        m.fetching &= ~bits
        if not was and m.have == swarm.full and m is not swarm.seed:
            swarm.complete += 1
            self._release_spares(m)
            for s in range(self.policy.stripes):
                self._unparent(swarm, m, s)

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
        if parent is not None:
            if msg.reason is FailReason.BAD_PIECE:
                parent.bad_reporters.add(msg.peer)
                if len(parent.bad_reporters) >= self.policy.global_ban_reporters:
                    parent.banned_until = now + self.policy.ban_seconds
                    parent.bad_reporters.clear()
            elif msg.reason is FailReason.SLOW:
                parent.slow.append(now)
        if msg.parent in m.spares:
            m.spares.remove(msg.parent)
            if parent is not None and parent.children > 0:
                parent.children -= 1
        for s, p in enumerate(m.stripe_parent):
            if p == msg.parent and p != swarm.seed.peer.id:
                slow = swarm.members.get(p)
                if (
                    msg.reason in (FailReason.SLOW, FailReason.BAD_PIECE)
                    and slow is not None
                    and slow.home == s
                    and self._demote(swarm, slow, now)
                ):
                    continue  # the reporter now hangs under the slow node's stand-in
                self._unparent(swarm, m, s)
                self._stripe_parent(swarm, m, s, now, repair=True)
                self._outbox[(m.peer.id, swarm.blob)] = None

    def _leave(self, msg: Leave, now: float) -> None:
        swarm = self._blobs.get(msg.blob)
        if swarm is not None and msg.peer in swarm.members and msg.peer != swarm.seed.peer.id:
            self._drop_member(swarm, msg.peer, now)

    def _dead(self, msg: PeerDead, now: float) -> None:
        peer = self._peers.get(msg.peer)
        if peer is None:
            return
        peer.dead = True
        for swarm in self._blobs.values():
            if msg.peer in swarm.members and msg.peer != swarm.seed.peer.id:
                self._drop_member(swarm, msg.peer, now)

    # the forest (rules 1-3, 5, 6) ---------------------------------------------------------

    def _place(self, swarm: BlobSwarm, m: Member, now: float) -> None:
        """A new agent: give it a home stripe and a parent in every stripe."""
        k = self.policy.stripes
        m.zone = m.peer.zone  # a later join may change the peer's zone: counted here
        zone_count = swarm.zone_interior.setdefault(m.zone, [0] * k)
        home = min(range(k), key=lambda st: (zone_count[st], swarm.interior[st]))
        zone_count[home] += 1
        m.home = home
        swarm.interior[home] += 1
        self._stripe_parent(swarm, m, home, now)  # first: it decides the node's depth
        for s in range(k):
            if s != home:
                self._stripe_parent(swarm, m, s, now)
        # children the seed was standing in for move under the new interior node
        for orphan in [*sorted(swarm.provisional[home]), *sorted(swarm.overflow[home])]:
            if len(m.kids) >= k:
                break
            o = swarm.members.get(orphan)
            if o is None or o is m:
                continue
            self._unparent(swarm, o, home)
            self._link(swarm, o, home, m)
            self._outbox[(orphan, swarm.blob)] = None
        self._offer_slots(swarm, m)

    def _offer_slots(self, swarm: BlobSwarm, p: Member) -> None:
        if len(p.kids) < self.policy.stripes and not p.peer.dead and not p.peer.slow:
            entry = (p.depth, next(swarm.seq), p.peer.id)
            heapq.heappush(swarm.slots[p.home], entry)
            if p.peer.zone:
                heapq.heappush(swarm.zone_slots.setdefault((p.home, p.peer.zone), []), entry)

    def _pop_slot(
        self, swarm: BlobSwarm, heap: list[tuple[int, int, PeerId]], m: Member, s: int, now: float
    ) -> Member | None:
        """The shallowest interior node of stripe ``s`` with a free slot ``m`` may use."""
        skipped = []
        found = None
        while heap:
            depth, _, pid = heap[0]
            c = swarm.members.get(pid)
            if c is None or c.home != s or c.depth != depth or len(c.kids) >= self.policy.stripes:
                heapq.heappop(heap)  # stale: lazily dropped
                continue
            if self._is_slow(c.peer, now):
                heapq.heappop(heap)  # no children for a slow peer
                continue
            if c is m or not self._usable(c.peer, m, now):
                skipped.append(heapq.heappop(heap))
                continue
            found = c
            break
        for e in skipped:
            heapq.heappush(heap, e)
        return found

    def _stripe_parent(
        self, swarm: BlobSwarm, m: Member, s: int, now: float, *, repair: bool = False
    ) -> None:
        seed = swarm.seed
        if s == m.home and len(swarm.seed_kids[s]) < self.policy.seed_fanout:
            self._link(swarm, m, s, seed)
            return
        best = self._pop_slot(swarm, swarm.slots[s], m, s, now)
        zone = m.peer.zone
        if zone:
            local = self._pop_slot(swarm, swarm.zone_slots.get((s, zone), []), m, s, now)
            if local is not None and (best is None or local.depth <= best.depth + 1):
                best = local
        if s == m.home and self._displace(swarm, m, s, best):
            return
        if best is not None:
            self._link(swarm, m, s, best)
            return
        # every slot taken: a fifth child of a healthy interior node, not the seed (the
        # last joiner of a full tree cost the root a whole extra stripe: 1.5 copies at 50
        # nodes); the seed stands in only where the stripe has no interior node yet
        host = self._overflow_host(swarm, m, s, now) if repair or swarm.interior[s] else None
        if host is not None:
            self._link(swarm, m, s, host)
            swarm.overflow[s].add(m.peer.id)  # moves to a free slot when one appears
            return
        # nobody yet: the seed stands in
        m.stripe_parent[s] = seed.peer.id
        swarm.provisional[s].add(m.peer.id)

    def _displace(self, swarm: BlobSwarm, m: Member, s: int, slot: Member | None) -> bool:
        """An interior node joining its tree takes the place of a leaf that sits higher
        than any free slot; the leaf moves under it. Interior nodes stay near the top, so
        a tree of n interior nodes is about log_stripes(n) deep, and its capacity grows
        with each (``stripes`` slots)."""
        heap = swarm.leaves[s]
        limit = slot.depth + 1 if slot is not None else 1 << 30
        while heap:
            depth, _, leaf_id, parent_id = heap[0]
            leaf = swarm.members.get(leaf_id)
            parent = swarm.members.get(parent_id)
            if (
                leaf is None
                or parent is None
                or leaf.stripe_parent[s] != parent_id
                or parent.depth + 1 != depth
                or parent.peer.dead
            ):
                heapq.heappop(heap)
                continue
            if (
                depth >= limit
                or leaf is m
                or parent is m  # its own child: it cannot go under itself
                or not self._usable(parent.peer, m, now=0.0)
            ):
                return False
            heapq.heappop(heap)
            self._unparent(swarm, leaf, s, reopen=False)
            self._link(swarm, m, s, parent)
            self._link(swarm, leaf, s, m)
            self._outbox[(leaf_id, swarm.blob)] = None
            return True
        return False

    def _demote(self, swarm: BlobSwarm, slow: Member, now: float) -> bool:
        """Rule 5b: a slow interior node's children move to healthy interior nodes of the
        same stripe, one extra child each at most (the shallowest such first), and the
        slow node gets no children while reports are fresh. Every slot of a full forest
        is taken, so the moved children cost a few healthy parents a fifth of their
        per-child rate on one stripe, instead of a whole subtree running at the slow
        node's pace."""
        s = slow.home
        if slow.peer.id in swarm.seed_kids[s]:
            # it held the seed's slot for this stripe: nobody else would get the stripe
            self._unparent(swarm, slow, s, reopen=False)
        cap = self.policy.stripes + 1
        order = swarm.order
        pool = order if len(order) <= 256 else self._rng.sample(order, 256)
        hosts = sorted(
            (c.depth, pid)
            for pid in pool
            if (c := swarm.members.get(pid)) is not None
            and c is not slow
            and c.home == s
            and len(c.kids) < cap
            and not c.peer.dead
            and not self._is_slow(c.peer, now)
        )
        moved = False
        for kid in sorted(slow.kids):
            km = swarm.members.get(kid)
            if km is None or not hosts:
                continue
            _, host_id = hosts[0]
            host = swarm.members[host_id]
            if kid == host_id or self._below(swarm, host, kid, s):
                continue
            self._unparent(swarm, km, s, reopen=False)
            self._link(swarm, km, s, host)
            self._outbox[(kid, swarm.blob)] = None
            moved = True
            if len(host.kids) >= cap:
                hosts.pop(0)
        self._fill_seed_slot(swarm, s, now, avoid=slow)
        if slow.peer.id in swarm.members and slow.stripe_parent[s] is None:
            self._stripe_parent(swarm, slow, s, now, repair=True)
            self._outbox[(slow.peer.id, swarm.blob)] = None
        return moved

    def _fill_seed_slot(self, swarm: BlobSwarm, s: int, now: float, *, avoid: Member) -> None:
        """The seed's child for stripe ``s`` is gone: the shallowest healthy interior node
        of the stripe moves up to take it (its own parent gets a slot back)."""
        if len(swarm.seed_kids[s]) >= self.policy.seed_fanout:
            return
        best: Member | None = None
        for pid in swarm.order:
            c = swarm.members.get(pid)
            if (
                c is None
                or c is avoid
                or c.home != s
                or c.peer.dead
                or self._is_slow(c.peer, now)
                or c.peer.banned_until > now
            ):
                continue
            if best is None or c.depth < best.depth:
                best = c
        if best is None:
            return
        self._unparent(swarm, best, s)
        self._link(swarm, best, s, swarm.seed)
        self._outbox[(best.peer.id, swarm.blob)] = None

    def _overflow_host(self, swarm: BlobSwarm, m: Member, s: int, now: float) -> Member | None:
        """Every slot is taken: the deepest healthy interior node of stripe ``s`` with
        fewer than ``stripes + 1`` children takes one more, rather than the seed, whose
        uplink must carry new pieces (standing in for many turns one copy into dozens).
        The deepest: its uplink, now shared five ways, feeds the fewest nodes below (the
        shallowest held back a whole stripe tree: 1.37x the bound at 300 nodes, 1.13x)."""
        cap = self.policy.stripes + 1
        order = swarm.order
        pool = order if len(order) <= 128 else self._rng.sample(order, 128)
        best: Member | None = None
        for pid in pool:
            c = swarm.members.get(pid)
            if (
                c is None
                or c is m
                or c.home != s
                or len(c.kids) >= cap
                or c.stripe_parent[s] is None
                or c.peer.dead
                or not self._usable(c.peer, m, now)
                or self._is_slow(c.peer, now)
                or (m.home == s and self._below(swarm, c, m.peer.id, s))
            ):
                continue
            if best is None or (c.depth, -len(c.kids)) > (best.depth, -len(best.kids)):
                best = c
        return best

    @staticmethod
    def _below(swarm: BlobSwarm, node: Member, ancestor: PeerId, s: int) -> bool:
        """Is ``node`` in ``ancestor``'s subtree of stripe ``s``? (no cycles)"""
        for _ in range(64):
            pid = node.stripe_parent[s]
            if pid is None or pid == swarm.seed.peer.id:
                return False
            if pid == ancestor:
                return True
            nxt = swarm.members.get(pid)
            if nxt is None:
                return False
            node = nxt
        return True

    def _is_slow(self, peer: PeerState, now: float) -> bool:
        if not peer.slow:
            return False
        horizon = now - self.policy.slow_memory
        peer.slow = [t for t in peer.slow if t > horizon]
        return bool(peer.slow)

    def _link(self, swarm: BlobSwarm, child: Member, s: int, parent: Member) -> None:
        child.stripe_parent[s] = parent.peer.id
        if parent is swarm.seed:
            swarm.seed_kids[s].add(child.peer.id)
            if s == child.home:
                child.depth = 1
            return
        parent.kids.add(child.peer.id)
        if s == child.home:
            child.depth = parent.depth + 1
        else:
            heapq.heappush(
                swarm.leaves[s], (parent.depth + 1, next(swarm.seq), child.peer.id, parent.peer.id)
            )

    def _unparent(self, swarm: BlobSwarm, child: Member, s: int, *, reopen: bool = True) -> None:
        pid = child.stripe_parent[s]
        child.stripe_parent[s] = None
        swarm.provisional[s].discard(child.peer.id)
        swarm.overflow[s].discard(child.peer.id)
        if pid is None:
            return
        if pid == swarm.seed.peer.id:
            swarm.seed_kids[s].discard(child.peer.id)  # (provisional ones are not in it)
            return
        parent = swarm.members.get(pid)
        if parent is not None and child.peer.id in parent.kids:
            parent.kids.discard(child.peer.id)
            if reopen:  # a banned parent's slot too: ``_pop_slot`` skips it while banned
                self._offer_slots(swarm, parent)

    def _drop_member(self, swarm: BlobSwarm, pid: PeerId, now: float) -> None:
        m = swarm.remove(pid)
        if m.have == swarm.full:
            swarm.complete -= 1
        self._release_spares(m)
        for s in range(self.policy.stripes):
            self._unparent(swarm, m, s)
        if m.home >= 0:
            swarm.interior[m.home] -= 1
            swarm.zone_interior[m.zone][m.home] -= 1  # the zone it was placed in
        if m.home >= 0:
            self._demote(swarm, m, now)  # children move to healthy parents, as for a slow one
        for kid in sorted(m.kids):
            c = swarm.members.get(kid)
            if c is None or c.stripe_parent[m.home] != pid:
                continue
            c.stripe_parent[m.home] = None
            if c.have != swarm.full:
                self._stripe_parent(swarm, c, m.home, now, repair=True)
                self._outbox[(kid, swarm.blob)] = None
        m.kids.clear()

    # spares (rule 4) and the answer ----------------------------------------------------

    def _assign(self, swarm: BlobSwarm, m: Member, now: float) -> Assignment:
        if m is swarm.seed or m.have == swarm.full:
            return Assignment(m.peer.id, swarm.blob, ())
        # a stripe parent that is gone or banned is replaced; a provisional seed is
        # replaced once the stripe has an interior node
        for s, pid in enumerate(m.stripe_parent):
            c = swarm.members.get(pid) if pid is not None else None
            gone = c is None or not self._usable(c.peer, m, now)
            if gone or m.peer.id in swarm.provisional[s]:
                self._unparent(swarm, m, s)
                self._stripe_parent(swarm, m, s, now, repair=gone)
        tree = set(m.stripe_parent)
        scored: list[tuple[float, PeerId]] = []
        for pid in self._candidates(swarm, m) if self.policy.spares else ():
            cand = swarm.members.get(pid)
            if (
                cand is None
                or pid in tree
                or cand is swarm.seed
                or not self._usable(cand.peer, m, now)
            ):
                continue
            sc = self._score(m, cand, now)
            if sc >= 0.0:
                scored.append((sc + self._rng.random() * 1e-3, pid))
        scored.sort(reverse=True)
        self._release_spares(m)
        m.spares = [pid for _, pid in scored[: self.policy.spares]]
        for pid in m.spares:
            self._peers[pid].children += 1
        return self._offers(swarm, m)

    def _offers(self, swarm: BlobSwarm, m: Member) -> Assignment:
        only: dict[PeerId, int] = {}
        for s, pid in enumerate(m.stripe_parent):
            if pid is not None:
                only[pid] = only.get(pid, 0) | swarm.stripe_masks[s]
        offers = []
        for pid, mask in only.items():
            c = swarm.members[pid]
            # a stripe parent receives every piece of its stripe, as the seed does: the
            # child may queue on any of them (cut-through along the tree, which has no
            # cycles), instead of learning piece by piece what the parent holds; a real
            # agent hears no such news between assignments
            coming = mask if self.policy.queue_on_stripe else c.fetching & mask
            offers.append(
                ParentOffer(
                    pid,
                    c.peer.zone,
                    c.have & mask,
                    coming & ~c.have,
                    mask,
                    seed=c is swarm.seed,
                )
            )
        for pid in m.spares:
            sp = swarm.members.get(pid)
            if sp is not None and pid not in only:
                offers.append(ParentOffer(pid, sp.peer.zone, sp.have, sp.fetching, -1, spare=True))
        return Assignment(m.peer.id, swarm.blob, tuple(offers))

    def _release_spares(self, m: Member) -> None:
        for pid in m.spares:
            peer = self._peers.get(pid)
            if peer is not None and peer.children > 0:
                peer.children -= 1
        m.spares = []

    def _candidates(self, swarm: BlobSwarm, m: Member) -> set[PeerId]:
        k = self.policy.sample
        out: set[PeerId] = set(m.spares)
        order = swarm.order
        out.update(order if len(order) <= k else self._rng.sample(order, k))
        out.discard(m.peer.id)
        return out

    def _score(self, m: Member, c: Member, now: float) -> float:
        lacks = ~m.have
        useful = (c.have & lacks).bit_count() + 0.5 * (c.fetching & ~c.have & lacks).bit_count()
        peer = c.peer
        free = max(0.0, 1.0 - max(peer.children, peer.uploads) / self.policy.child_slots)
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

    # small helpers ----------------------------------------------------------------------

    def _peer(self, pid: PeerId, zone: str) -> PeerState:
        peer = self._peers.get(pid)
        if peer is None:
            peer = self._peers[pid] = PeerState(pid, zone)
        elif zone:
            peer.zone = zone
        return peer

    def _member(self, swarm: BlobSwarm, pid: PeerId) -> Member:
        m = swarm.members.get(pid)
        if m is None:
            raise PeerNotJoinedError(f"{pid} has not joined {swarm.blob}")
        return m

    def _usable(self, peer: PeerState, m: Member, now: float) -> bool:
        if peer.dead or peer.banned_until > now:
            return False
        until = m.bans.get(peer.id)
        if until is None:
            return True
        if until > now:
            return False
        del m.bans[peer.id]
        return True
