"""The striped forest: where each member of a blob's swarm sits in each stripe's tree.

Part of the root's scheduler (``scheduler.Scheduler`` composes one ``StripeForest`` for
all its blobs), kept apart because it is one concept with its own rules: placing an
agent in every stripe's tree, the free slots, displacing leaves, and the repairs when a
parent is reported, dies or leaves. The state it changes is ``membership.BlobSwarm``'s;
whom the scheduler offers beside the trees (spares, rule 4) and the bans are in
``scheduler.py``. A member whose tree changed although it did not ask is queued in
``updates``; the scheduler hands those out from ``take_updates``.

Rules (numbered as the scheduler's):

1. The blob's pieces are split into ``stripes`` stripes (piece index mod ``stripes``).
   Each agent gets a *home* stripe (the least populated one in its zone, then overall)
   and, for every stripe, exactly one *stripe parent* that sends it that stripe's pieces.
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
5. A stripe parent reported by a child (unreachable, bad, slow): that child gets a new
   stripe parent (update); a report of the seed changes nothing here. (5b) A parent
   reported slow or bad in its home stripe (where it is an interior node), or dead, or
   leaving: all its tree children move to healthy interior nodes of that stripe, one
   extra child each at most (the shallowest first), and the rest get new stripe
   parents; if it held the seed's slot for the stripe, the shallowest healthy node of
   the stripe moves up into it. A slow one gets no children while the report is fresh
   (``slow_memory``).
6. An agent that holds every piece frees its tree slots (parents' slots reopen) and
   stays a parent until it leaves.
"""

from __future__ import annotations

import heapq
import random

from shoal.config import SchedulerPolicy
from shoal.swarm.membership import BlobSwarm, Member, PeerState
from shoal.swarm.messages import FailReason, PeerId


class StripeForest:
    """The stripe trees of every blob swarm of one root (rules 1-3, 5, 6)."""

    def __init__(self, policy: SchedulerPolicy, rng: random.Random) -> None:
        self.policy = policy
        self._rng = rng  # the scheduler's: one seeded stream, so a simulation reproduces
        #: members whose tree changed although they did not ask: (peer, blob), in order
        self.updates: dict[tuple[PeerId, str], None] = {}

    def __repr__(self) -> str:
        return f"<StripeForest [{self.policy.stripes} stripes, {len(self.updates)} updates]>"

    # what the scheduler asks --------------------------------------------------------

    def place(self, swarm: BlobSwarm, m: Member, now: float) -> None:
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
            self.updates[(orphan, swarm.blob)] = None
        self._offer_slots(swarm, m)

    def refresh(self, swarm: BlobSwarm, m: Member, now: float) -> None:
        """Before answering ``m``: a stripe parent that is gone or banned is replaced; a
        provisional seed is replaced once the stripe has an interior node."""
        for s, pid in enumerate(m.stripe_parent):
            c = swarm.members.get(pid) if pid is not None else None
            gone = c is None or not self.usable(c.peer, m, now)
            if gone or m.peer.id in swarm.provisional[s]:
                self._unparent(swarm, m, s)
                self._stripe_parent(swarm, m, s, now, repair=gone)

    def reported(
        self, swarm: BlobSwarm, m: Member, parent: PeerId, reason: FailReason, now: float
    ) -> None:
        """``m`` reported its stripe parent ``parent`` (rule 5): new parents where it was
        one, or the reported node's whole subtree moves (5b)."""
        for s, p in enumerate(m.stripe_parent):
            if p == parent and p != swarm.seed.peer.id:
                slow = swarm.members.get(p)
                if (
                    reason in (FailReason.SLOW, FailReason.BAD_PIECE)
                    and slow is not None
                    and slow.home == s
                    and self._demote(swarm, slow, now)
                ):
                    continue  # the reporter now hangs under the slow node's stand-in
                self._unparent(swarm, m, s)
                self._stripe_parent(swarm, m, s, now, repair=True)
                self.updates[(m.peer.id, swarm.blob)] = None

    def release(self, swarm: BlobSwarm, m: Member) -> None:
        """``m`` holds every piece (rule 6): its parents' slots reopen."""
        for s in range(self.policy.stripes):
            self._unparent(swarm, m, s)

    def drop(self, swarm: BlobSwarm, m: Member, now: float) -> None:
        """``m`` left the swarm or died (already removed from it): rule 5."""
        pid = m.peer.id
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
                self.updates[(kid, swarm.blob)] = None
        m.kids.clear()

    def usable(self, peer: PeerState, m: Member, now: float) -> bool:
        """May ``peer`` be ``m``'s parent: alive, not banned for all nor by ``m``."""
        if peer.dead or peer.banned_until > now:
            return False
        until = m.bans.get(peer.id)
        if until is None:
            return True
        if until > now:
            return False
        del m.bans[peer.id]
        return True

    def is_slow(self, peer: PeerState, now: float) -> bool:
        """Reported slow within ``slow_memory`` (older reports are forgotten here)."""
        if not peer.slow:
            return False
        horizon = now - self.policy.slow_memory
        peer.slow = [t for t in peer.slow if t > horizon]
        return bool(peer.slow)

    # slots and parents (rules 1-3) ----------------------------------------------------

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
            if self.is_slow(c.peer, now):
                heapq.heappop(heap)  # no children for a slow peer
                continue
            if c is m or not self.usable(c.peer, m, now):
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
                or not self.usable(parent.peer, m, now=0.0)
            ):
                return False
            heapq.heappop(heap)
            self._unparent(swarm, leaf, s, reopen=False)
            self._link(swarm, m, s, parent)
            self._link(swarm, leaf, s, m)
            self.updates[(leaf_id, swarm.blob)] = None
            return True
        return False

    # repairs (rule 5) -------------------------------------------------------------------

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
            and not self.is_slow(c.peer, now)
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
            self.updates[(kid, swarm.blob)] = None
            moved = True
            if len(host.kids) >= cap:
                hosts.pop(0)
        self._fill_seed_slot(swarm, s, now, avoid=slow)
        if slow.peer.id in swarm.members and slow.stripe_parent[s] is None:
            self._stripe_parent(swarm, slow, s, now, repair=True)
            self.updates[(slow.peer.id, swarm.blob)] = None
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
                or self.is_slow(c.peer, now)
                or c.peer.banned_until > now
            ):
                continue
            if best is None or c.depth < best.depth:
                best = c
        if best is None:
            return
        self._unparent(swarm, best, s)
        self._link(swarm, best, s, swarm.seed)
        self.updates[(best.peer.id, swarm.blob)] = None

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
                or not self.usable(c.peer, m, now)
                or self.is_slow(c.peer, now)
                or (m.home == s and self._below(swarm, c, m.peer.id, s))
            ):
                continue
            if best is None or (c.depth, -len(c.kids)) > (best.depth, -len(best.kids)):
                best = c
        return best

    # the links ------------------------------------------------------------------------

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
