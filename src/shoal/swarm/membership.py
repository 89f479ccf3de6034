"""Who is in each blob's swarm, as the root's scheduler keeps it: plain state.

``PeerState`` is a node over every blob (its uplink is one, so load and reputation live
there); ``Member`` is a peer in one blob's swarm (what it holds and fetches, its place
in each stripe's tree); ``BlobSwarm`` is one blob's swarm (members, the stripe trees'
free slots and leaves, the seed's children). The rules that change them are in
``scheduler.py``.
"""

from __future__ import annotations

import itertools

from shoal.swarm.messages import PeerId
from shoal.swarm.pieces import full_mask, mask_of, piece_count


class PeerState:
    """A node, over every blob: its uplink is one, so load and reputation are here."""

    __slots__ = (
        "bad_reporters",
        "banned_until",
        "children",
        "dead",
        "gone_reporters",
        "heard",
        "id",
        "slow",
        "uploads",
        "zone",
    )

    def __init__(self, peer: PeerId, zone: str) -> None:
        self.id = peer
        self.zone = zone
        self.children = 0  # spare children over all blobs
        self.uploads = 0  # last reported active uploads
        self.slow: list[float] = []  # times of slow reports
        self.bad_reporters: set[PeerId] = set()
        #: agents that reported it unreachable, and when
        self.gone_reporters: dict[PeerId, float] = {}
        #: when it last called the root (``Scheduler.seen``); -inf: never said
        self.heard = float("-inf")
        self.banned_until = 0.0
        self.dead = False


class Member:
    """A peer in one blob's swarm."""

    __slots__ = (
        "bans",
        "depth",
        "fetching",
        "have",
        "home",
        "kids",
        "peer",
        "spares",
        "stripe_parent",
        "zone",
    )

    def __init__(self, peer: PeerState, have: int, stripes: int) -> None:
        self.peer = peer
        self.have = have
        self.fetching = 0
        self.home = -1
        self.depth = 0  # in the home stripe's tree; the seed's children are at 1
        self.stripe_parent: list[PeerId | None] = [None] * stripes
        self.kids: set[PeerId] = set()  # tree children (in the home stripe's tree)
        self.spares: list[PeerId] = []
        self.bans: dict[PeerId, float] = {}  # parent -> until
        self.zone = ""  # the zone it was placed in (its peer's zone may change later)


class BlobSwarm:
    """One blob's swarm as the root sees it; created by ``Scheduler.add_blob``."""

    def __init__(self, blob: str, size: int, piece_size: int, seed: Member, stripes: int) -> None:
        self.blob = blob
        self.size = size
        self.piece_size = piece_size
        self.count = piece_count(size, piece_size)
        self.full = full_mask(self.count)
        self.seed = seed
        k = stripes
        self.stripe_masks = [mask_of(range(s, self.count, k)) for s in range(k)]
        self.members: dict[PeerId, Member] = {seed.peer.id: seed}
        self.interior = [0] * k
        self.zone_interior: dict[str, list[int]] = {}
        self.seed_kids: list[set[PeerId]] = [set() for _ in range(k)]
        self.provisional: list[set[PeerId]] = [set() for _ in range(k)]  # seed stands in
        self.overflow: list[set[PeerId]] = [set() for _ in range(k)]  # a 5th child
        # interior nodes with a free slot, by depth: (depth, seq, peer)
        self.slots: list[list[tuple[int, int, PeerId]]] = [[] for _ in range(k)]
        self.zone_slots: dict[tuple[int, str], list[tuple[int, int, PeerId]]] = {}
        # leaves by the depth they sit at: (depth, seq, leaf, its parent)
        self.leaves: list[list[tuple[int, int, PeerId, PeerId]]] = [[] for _ in range(k)]
        self.seq = itertools.count()
        self.order: list[PeerId] = []  # agents, for O(1) random sampling
        self._pos: dict[PeerId, int] = {}
        self.complete = 0

    def __repr__(self) -> str:
        return (
            f"<BlobSwarm {self.blob[:19]} [{self.count} pieces, seed has "
            f"{self.seed.have.bit_count()} | {len(self.order)} agents, {self.complete} "
            f"complete | interior per stripe {self.interior}, provisional "
            f"{[len(p) for p in self.provisional]}]>"
        )

    def agents(self) -> int:
        return len(self.order)

    def add(self, m: Member) -> None:
        pid = m.peer.id
        self.members[pid] = m
        self._pos[pid] = len(self.order)
        self.order.append(pid)

    def remove(self, pid: PeerId) -> Member:
        m = self.members.pop(pid)
        i = self._pos.pop(pid)
        last = self.order.pop()
        if last != pid:
            self.order[i] = last
            self._pos[last] = i
        return m
