"""The root's scheduler: who is in each blob's swarm, what each holds, whom to fetch from.

One ``Scheduler`` per root; one ``BlobSwarm`` per blob the root owns. It is a pure state
machine: messages in (``handle(msg, now)``), ``Assignment`` decisions out (the answer to
``Join``/``AskParents``, plus unsolicited updates for other agents in ``take_updates()``),
time passed in, randomness from a seeded ``random.Random`` so the simulator reproduces.

The goal is that every node's upload stays busy. A fixed tree with fan-out f caps each
level at B/f; a random mesh wastes uplink when the pieces a node holds are not the ones
its children want (simulated here: 1.3-1.8x the bound at 20-100 nodes). So the scheduler
builds a *striped forest* (SplitStream's idea) and keeps a small mesh beside it:

Rules 1-3 (stripes, trees, slots), 5 (repairs) and 6 (completion) shape the forest and
are at the top of ``forest.py``, whose ``StripeForest`` this class composes. Here:

4. Beside the stripe parents each agent gets ``spares`` mesh parents (``spare=True`` in
   the offer): scored by the table ``SCORE`` (pieces it holds or fetches that the
   requester lacks, free upload, same zone, minus recent slow reports), picked from a
   random sample of ``sample`` members so a decision costs the same at 10,000 members.
   The picker asks a spare only for pieces no stripe parent can give: spares cover a
   slow or broken tree without stealing its uplink.
5. (bans; the tree's repairs are the forest's) A reported parent is not offered to the
   reporter for ``ban_seconds``; a reported spare is dropped. A bad piece bans a parent
   for the reporter; bad pieces from ``global_ban_reporters`` agents ban it for all, for
   ``ban_seconds``. A slow report counts against the parent for ``slow_memory``.
   A parent ``global_ban_reporters`` agents found unreachable within ``slow_memory`` is
   dead for everyone (as ``PeerDead``): its tree children all move now, not at the
   root's silence rule; it joins again when it next talks to the root. Not while it
   still talks to the root (``seen``, within ``alive_window``): a host so busy that
   its agent answers pings late is alive, and declaring it dead sent whole swarms of
   32 agents on 2 cores to the origin.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from shoal.config import SchedulerPolicy
from shoal.swarm.errors import BlobNotJoinedError, PeerNotJoinedError
from shoal.swarm.forest import StripeForest
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
        self._forest = StripeForest(self.policy, self._rng)
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
            f"{len(self._forest.updates)} updates queued]>"
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
        updates = self._forest.updates  # (peer, blob) whose tree changed, in order
        for pid, blob in updates:
            swarm = self._blobs.get(blob)
            m = swarm.members.get(pid) if swarm is not None else None
            if swarm is not None and m is not None and m.have != swarm.full:
                out.append(self._offers(swarm, m))
        updates.clear()
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
            self._forest.place(swarm, m, now)
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
            self._forest.release(swarm, m)

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
            elif msg.reason is FailReason.UNREACHABLE and self._gone(parent, msg.peer, now):
                # several agents cannot reach it: it is dead or stopped for everyone, and
                # waiting for the root's silence rule (15 s) would leave every other child
                # of it stalled; it joins again when it talks to the root again
                self._dead(PeerDead(parent.id), now)
                return
        if msg.parent in m.spares:
            m.spares.remove(msg.parent)
            if parent is not None and parent.children > 0:
                parent.children -= 1
        self._forest.reported(swarm, m, msg.parent, msg.reason, now)

    def seen(self, peer: PeerId, now: float) -> None:
        """``peer`` called this root (any call): it runs, whatever its peers say."""
        state = self._peers.get(peer)
        if state is not None:
            state.heard = now

    def _gone(self, parent: PeerState, reporter: PeerId, now: float) -> bool:
        """``global_ban_reporters`` distinct agents found ``parent`` unreachable within
        ``slow_memory`` seconds, and it has not called the root for ``alive_window``."""
        if now - parent.heard < self.policy.alive_window:
            return False
        seen = parent.gone_reporters
        seen[reporter] = now
        horizon = now - self.policy.slow_memory
        for pid in [p for p, t in seen.items() if t < horizon]:
            del seen[pid]
        if len(seen) < self.policy.global_ban_reporters:
            return False
        seen.clear()
        return True

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

    def _drop_member(self, swarm: BlobSwarm, pid: PeerId, now: float) -> None:
        m = swarm.remove(pid)
        if m.have == swarm.full:
            swarm.complete -= 1
        self._release_spares(m)
        self._forest.drop(swarm, m, now)  # its tree children get new parents (updates)

    # spares (rule 4) and the answer ----------------------------------------------------

    def _assign(self, swarm: BlobSwarm, m: Member, now: float) -> Assignment:
        if m is swarm.seed or m.have == swarm.full:
            return Assignment(m.peer.id, swarm.blob, ())
        self._forest.refresh(swarm, m, now)
        tree = set(m.stripe_parent)
        scored: list[tuple[float, PeerId]] = []
        for pid in self._candidates(swarm, m) if self.policy.spares else ():
            cand = swarm.members.get(pid)
            if (
                cand is None
                or pid in tree
                or cand is swarm.seed
                or not self._forest.usable(cand.peer, m, now)
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
