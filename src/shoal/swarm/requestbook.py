"""The requests out of one blob download: per piece, per parent, and each piece's state.

Part of the piece picker (``picker.PiecePicker`` composes one ``RequestBook``), kept
apart because it is one concept with its own small state and no choices: which
requests are out, at which parent, since when, how many each parent holds, and what a
piece may do next. Which piece to ask of whom, when a request is late and when a parent
is dropped are the picker's decisions (``picker.py``); this only keeps the books
straight as they happen:

1. A request is recorded when asked (``ask``) and forgotten when its piece lands, it
   fails, is withdrawn or cancelled; a piece is ``requested`` while one or more
   requests for it are out (several in the endgame).
2. Every request counts against its parent (``Parent.inflight``) and the download
   (``inflight``); a parent left out of a new parent set (``retiring``) is forgotten
   once its last request is over.
3. A piece whose last request is gone without it goes back to missing, so it is asked
   again; the piece state table (``PIECE``) says what a piece may do on each event, and
   anything else is a bug in the picker (``PieceIndexError``).
"""

from __future__ import annotations

import enum
from operator import attrgetter

from shoal.swarm.errors import PieceIndexError
from shoal.swarm.messages import Cancel, ParentOffer, PeerId, PickerAction, Request


class PieceState(enum.Enum):
    MISSING = "missing"
    REQUESTED = "requested"
    DONE = "done"

    # by identity: members are singletons, and Enum's own hash (of the name, in Python)
    # was a measurable share of the simulator's time (every piece checks the table)
    __hash__ = object.__hash__


class PieceEvent(enum.Enum):
    ASK = "ask"
    LANDED = "landed"
    LOST = "lost"  # the last request for it failed, stalled or brought bad bytes
    LOST_COPY = "lost-copy"  # one of several (endgame) requests failed

    __hash__ = object.__hash__


#: the piece state table: (state, event) -> the state after
PIECE: dict[tuple[PieceState, PieceEvent], PieceState] = {
    (PieceState.MISSING, PieceEvent.ASK): PieceState.REQUESTED,
    (PieceState.REQUESTED, PieceEvent.ASK): PieceState.REQUESTED,  # endgame duplicate
    (PieceState.REQUESTED, PieceEvent.LANDED): PieceState.DONE,
    (PieceState.REQUESTED, PieceEvent.LOST): PieceState.MISSING,
    (PieceState.REQUESTED, PieceEvent.LOST_COPY): PieceState.REQUESTED,
    (PieceState.DONE, PieceEvent.LANDED): PieceState.DONE,  # a late duplicate
}


class Parent:
    """One parent as the download sees it: what it may give, what it holds of ours."""

    __slots__ = (
        "delivered",
        "has",
        "heard",
        "inflight",
        "mean",
        "only",
        "patience",
        "peer",
        "pending",
        "probing",
        "retiring",
        "samples",
        "seed",
        "spare",
    )

    def __init__(self, offer: ParentOffer, full: int) -> None:
        self.peer = offer.peer
        self.only = offer.only & full
        self.has = offer.have & self.only
        self.pending = offer.fetching & self.only & ~self.has
        self.inflight = 0
        self.retiring = False
        self.spare = offer.spare
        self.seed = offer.seed
        self.mean = 0.0  # this parent's mean piece time
        self.samples = 0
        self.heard = 0.0  # last sign of life while it held requests (picker rule 7)
        self.delivered = float("-inf")  # its last piece to us (picker rule 3)
        self.probing = False
        #: silence limits to wait before the next probe (picker rule 7): doubles each time
        #: the parent answers one without sending anything, back to 1 at its next byte
        self.patience = 1

    def __repr__(self) -> str:
        return (
            f"<Parent {self.peer} [{self.inflight} in flight, has {self.has.bit_count()}"
            f"{', spare' if self.spare else ''}{', retiring' if self.retiring else ''}]>"
        )


busy = attrgetter("inflight")  #: a parent's requests in flight (C-level key for ``min``)


class Req:
    """One request: to whom, when asked, when its bytes started (-1: not yet)."""

    __slots__ = ("asked", "parent", "started")

    def __init__(self, parent: PeerId, asked: float) -> None:
        self.parent = parent
        self.asked = asked
        self.started = -1.0


class RequestBook:
    """The requests of one download and the parents they are out at (rules 1-3)."""

    __slots__ = ("inflight", "parents", "reqs", "requested")

    def __init__(self) -> None:
        self.reqs: dict[int, list[Req]] = {}
        self.parents: dict[PeerId, Parent] = {}
        self.requested = 0  # pieces with at least one request out
        self.inflight = 0

    def __repr__(self) -> str:
        return (
            f"<RequestBook [{self.inflight} in flight for {len(self.reqs)} pieces, "
            f"{len(self.parents)} parents]>"
        )

    def find(self, index: int, parent: PeerId) -> Req | None:
        return next((r for r in self.reqs.get(index, ()) if r.parent == parent), None)

    def outstanding(self) -> list[tuple[PeerId, int]]:
        return [(r.parent, i) for i, rs in self.reqs.items() for r in rs]

    def flowing(self) -> set[PeerId]:
        """Parents sending a piece now."""
        return {r.parent for rs in self.reqs.values() for r in rs if r.started >= 0}

    def shift(self, gap: float) -> None:
        """Every clock on by ``gap`` (the process did not run)."""
        for rs in self.reqs.values():
            for r in rs:
                r.asked += gap
                if r.started >= 0:
                    r.started += gap
        for p in self.parents.values():
            p.heard += gap
            p.delivered += gap

    def queued_since(self, r: Req) -> float:
        """A queued request waits on its parent's progress, not on its own age: a
        stripe parent that keeps delivering keeps every read queued on it alive (reads
        queued far ahead of the origin's stream legitimately wait tens of seconds)."""
        p = self.parents.get(r.parent)
        return r.asked if p is None else max(r.asked, p.delivered)

    def ask(self, p: Parent, index: int, now: float, have: int) -> Request:
        """Record a request for ``index`` at ``p``: the action to send it."""
        self.transition(index, PieceEvent.ASK, have)
        if p.inflight == 0:
            p.heard = now  # the silence clock runs while it holds requests
        self.reqs.setdefault(index, []).append(Req(p.peer, now))
        self.requested |= 1 << index
        p.inflight += 1
        self.inflight += 1
        return Request(p.peer, index)

    def remove(self, index: int, req: Req) -> None:
        rs = self.reqs[index]
        rs.remove(req)
        if not rs:
            del self.reqs[index]
        self.release(req.parent)

    def release(self, parent: PeerId) -> None:
        self.inflight -= 1
        p = self.parents.get(parent)
        if p is not None:
            p.inflight -= 1
            if p.retiring and p.inflight == 0:
                del self.parents[parent]

    def lose(self, index: int, req: Req, have: int) -> None:
        """``req`` ended without its piece: the piece is missing again unless another
        request for it is still out (rule 3)."""
        self.remove(index, req)
        rs = self.reqs.get(index)
        if rs:
            self.transition(index, PieceEvent.LOST_COPY, have)
        else:
            self.transition(index, PieceEvent.LOST, have)
            self.reqs.pop(index, None)
            self.requested &= ~(1 << index)

    def landed(self, index: int) -> list[PickerAction]:
        """Piece ``index`` is here (its request removed): the other requests for it
        (endgame copies) are cancelled."""
        actions: list[PickerAction] = []
        for other in self.reqs.pop(index, []):
            self.release(other.parent)
            actions.append(Cancel(other.parent, index))
        self.requested &= ~(1 << index)
        return actions

    def withdraw(self, parent: PeerId, allowed: int, have: int) -> list[PickerAction]:
        """Cancel ``parent``'s requests that have not started, outside ``allowed``."""
        actions: list[PickerAction] = []
        for index in [i for i in self.reqs if not (allowed >> i) & 1]:
            for r in [r for r in self.reqs[index] if r.parent == parent and r.started < 0]:
                actions.append(Cancel(parent, index))
                self.remove(index, r)
                if index not in self.reqs:
                    self.transition(index, PieceEvent.LOST, have)
                    self.requested &= ~(1 << index)
        return actions

    def drop(self, parent: PeerId, have: int) -> list[PickerAction] | None:
        """Forget ``parent`` and cancel every request out at it; ``None`` if it was not
        a parent."""
        if self.parents.pop(parent, None) is None:
            return None
        actions: list[PickerAction] = []
        for i in [i for i, rs in self.reqs.items() if any(r.parent == parent for r in rs)]:
            for r in [r for r in self.reqs[i] if r.parent == parent]:
                actions.append(Cancel(parent, i))
                self.reqs[i].remove(r)
                self.inflight -= 1
            if not self.reqs[i]:
                del self.reqs[i]
                self.transition(i, PieceEvent.LOST, have)
                self.requested &= ~(1 << i)
        return actions

    def cancel_all(self) -> list[PickerAction]:
        """Give up every request: their cancellations."""
        actions: list[PickerAction] = []
        for index, rs in list(self.reqs.items()):
            for r in list(rs):
                actions.append(Cancel(r.parent, index))
                self.remove(index, r)
            self.requested &= ~(1 << index)
        return actions

    def transition(self, index: int, event: PieceEvent, have: int) -> None:
        if (have >> index) & 1:
            state = PieceState.DONE
        elif (self.requested >> index) & 1:
            state = PieceState.REQUESTED
        else:
            state = PieceState.MISSING
        if (state, event) not in PIECE:
            raise PieceIndexError(f"piece {index}: {event.value} when {state.value}")
