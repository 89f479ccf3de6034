"""The agent's piece picker for one blob download: which piece to ask of which parent.

A pure state machine, one per blob being fetched. The shell feeds it what happens
(``on_parents``, ``on_have``, ``on_fetching``, ``on_started``, ``on_piece``,
``on_failed``, ``on_timer``) and after any of them calls ``requests(now)``; every call
returns actions to carry out (``Request``, ``Cancel``, ``ParentFailed`` for the root,
``NeedParents``). Time is passed in; randomness comes from a seeded ``random.Random``.

Rules:

1. Limits: at most ``per_parent`` requests to one parent and ``total`` in all; each
   request goes to the least-busy parent that can serve one (spreads uplink load). A
   ``spare`` parent is asked only for pieces no other parent holds or is fetching.
2. Order: the first ``window`` missing pieces come first, lowest index first, so the
   runtime can be streamed in order; beyond the window, the rarest among this agent's
   parents (sampled: ``samples`` random candidates, fewest parents holding it), so that
   peers hold different pieces to trade. A parent is asked first for pieces it holds,
   then for pieces it is still fetching (cut-through: it answers when they land), and
   those lowest index first: they land in about that order (a stripe parent is offered
   as fetching its whole stripe; rarest-first among those ran 1.39x the bound, 1.02x).
3. Stall: a request is stalled when its bytes have been flowing (``on_started``) longer
   than ``stall_factor`` x the mean piece time seen so far, and never sooner than
   ``stall_floor`` seconds (Dragonfly: 20x; relative, with a floor, so it works at 1 MB/s
   and at 10 Gbit/s). A stalled request is cancelled, the parent dropped and reported
   ``SLOW``, and the piece asked elsewhere. Queued requests wait on their parent's
   progress: one that delivered nothing for ``queue_timeout`` is waiting for pieces
   itself; it is dropped and reported ``REFUSED`` (not blamed: the root re-parents the
   stripe), and its requests are asked again elsewhere.
   3b. A parent whose mean piece time (over ``slow_samples`` pieces or more) is
   ``slow_ratio`` x the median of the other parents' is dropped and reported ``SLOW``
   too: a straggler that is 4x slower never trips a stall, yet in a stripe tree it would
   hold back everyone below it.
4. A bad piece (hash mismatch) bans the parent for ``ban_seconds`` and is reported
   ``BAD_PIECE``; an unreachable parent is dropped and reported; a refused request only
   frees the piece. Every failed piece goes back to the missing set and is asked again.
5. Endgame: once every missing piece is requested and slots are idle, the oldest
   requests, if older than the mean piece time, are duplicated at other parents (at
   most ``endgame`` duplicates); the first copy to land wins, the others are cancelled.
6. Starving: slots idle, pieces missing and no parent can help -> ``NeedParents`` (at
   most once per ``refresh_interval``).
7. Silence: a parent that holds requests, none of them flowing, and has sent nothing for
   ``silence_factor`` x the mean piece time, never sooner than ``silence_floor``, is
   probed (``ProbePeer``: a ping on its connection). A stripe parent waiting for its own
   parent is alive and says so; a stopped or wedged one does not answer and is dropped
   as ``UNREACHABLE`` within a ping timeout, its queued requests asked elsewhere (reads
   queued at a stopped parent waited out ``queue_timeout``). Never the seed (a root).
   Each answer without a byte of the blob doubles the wait before the next probe, up to
   ``MAX_PATIENCE`` silence limits (a parent waiting for a deep tree's stream was probed
   every half second); its next byte resets it.
8. Wanted: only pieces in ``wanted`` are asked for (``want``); a whole download wants
   every piece, an on-demand range the pieces it covers. ``satisfied`` says they are here.

The requests out, per piece and per parent, and the piece state table are kept by a
``requestbook.RequestBook``: this module decides, the book keeps count.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from shoal.config import PickerPolicy
from shoal.swarm.errors import PieceIndexError
from shoal.swarm.messages import (
    Cancel,
    FailReason,
    NeedParents,
    ParentFailed,
    ParentOffer,
    PeerId,
    PickerAction,
    ProbePeer,
)
from shoal.swarm.pieces import full_mask, lowest
from shoal.swarm.requestbook import Parent, PieceEvent, PieceState, Req, RequestBook, busy

__all__ = ["PiecePicker", "PieceState"]

#: rule 7: at most this many silence limits between probes of a parent that keeps
#: answering without sending (4 x the 0.5 s floor: a parent stopped while it waited is
#: dropped 2 s later at most, plus the ping's timeout)
MAX_PATIENCE = 4


class PiecePicker:
    """Decides the next piece requests of one blob download."""

    def __init__(
        self,
        peer: PeerId,
        blob: str,
        count: int,
        policy: PickerPolicy | None = None,
        *,
        have: int = 0,
        seed: int = 0,
    ) -> None:
        self.peer = peer
        self.blob = blob
        self.count = count
        self.policy = policy or PickerPolicy()
        self.full = full_mask(count)
        self.have = have & self.full
        self.wanted = self.full  # pieces to fetch (rule 8)
        self._book = RequestBook()  # the requests out and their parents
        self._banned: dict[PeerId, float] = {}
        self._mean = 0.0  # mean piece time (started -> landed); 0 until the first
        self._last_need = float("-inf")
        self._rng = random.Random(seed)
        # some parent is (or was) a spare (set in ``on_parents``; a stale True costs a mask)
        self._spares = False

    def __repr__(self) -> str:
        return (
            f"<PiecePicker {self.blob[:19]} [{self.have.bit_count()}/{self.count} pieces, "
            f"{self._book.inflight} in flight, {len(self._book.parents)} parents, "
            f"{len(self._banned)} banned | mean piece {self._mean * 1e3:.1f} ms]>"
        )

    # what the shell reads -----------------------------------------------------------

    @property
    def done(self) -> bool:
        return self.have == self.full

    @property
    def satisfied(self) -> bool:
        """Every wanted piece is here."""
        return self.wanted & ~self.have == 0

    @property
    def requested(self) -> int:
        """Pieces with at least one request out."""
        return self._book.requested

    @property
    def in_flight(self) -> int:
        return self._book.inflight

    @property
    def idle(self) -> bool:
        """Room for another request (cheap check before calling ``requests``)."""
        return self._book.inflight < self.policy.total and bool(self.wanted & ~self.have)

    @property
    def contiguous(self) -> int:
        """Pieces ready from the start of the blob: what may be streamed to the runtime."""
        missing = ~self.have & self.full
        return self.count if not missing else lowest(missing)

    @property
    def mean_piece_time(self) -> float:
        return self._mean

    def parents(self) -> list[PeerId]:
        return [p for p, v in self._book.parents.items() if not v.retiring]

    def is_seed(self, parent: PeerId) -> bool:
        return (p := self._book.parents.get(parent)) is not None and p.seed

    def outstanding(self) -> list[tuple[PeerId, int]]:
        return self._book.outstanding()

    def next_deadline(self) -> float | None:
        """When ``on_timer`` may find a stalled request or a silent parent; ``None`` when
        nothing is in flight."""
        limit = self._stall_limit()
        best: float | None = None
        book = self._book
        for rs in book.reqs.values():
            for r in rs:
                qt = book.queued_since(r) + self.policy.queue_timeout
                t = r.started + limit if r.started >= 0 else qt
                if best is None or t < best:
                    best = t
        quiet = self._silence_limit()
        times = [self._probe_at(p, quiet) for p in self._may_ping(book.flowing())]
        return min((t for t in (best, *times) if t is not None), default=None)

    # what the shell asks for ------------------------------------------------------------

    def want(self, mask: int) -> None:
        """Fetch these pieces too (rule 8); ``-1`` is every piece."""
        self.wanted |= mask & self.full

    def set_wanted(self, mask: int) -> None:
        """Fetch only these pieces (an on-demand download's first range)."""
        self.wanted = mask & self.full

    def shift(self, gap: float) -> None:
        """This process did not run for ``gap`` seconds (stopped, swapped out): move every
        clock on by as much, so that nobody is blamed for time that passed only here."""
        self._book.shift(gap)
        self._last_need += gap

    def abandon(self) -> list[PickerAction]:
        """Give up every request (the download goes elsewhere): their cancellations."""
        return self._book.cancel_all()

    # events ---------------------------------------------------------------------------

    def on_parents(self, offers: Sequence[ParentOffer], now: float) -> list[PickerAction]:
        """A new parent set from the root. Parents left out retire: no new requests, and
        their requests still queued (not started) are cancelled, as are queued requests
        a kept parent may no longer be asked (its ``only`` narrowed): the pieces are asked
        of the new parents. Left queued, they would still be served when their piece
        lands, which is how a root standing in for a stripe's first parent ended up
        sending the same piece to a dozen agents in the real bench."""
        self._expire_bans(now)
        book = self._book
        parents = book.parents
        keep = set()
        for o in offers:
            if o.peer in self._banned:
                continue
            keep.add(o.peer)
            p = parents.get(o.peer)
            if p is None:
                parents[o.peer] = Parent(o, self.full)
            else:
                p.only = o.only & self.full
                p.spare = o.spare
                p.has = (p.has | o.have) & p.only
                p.pending = (p.pending | o.fetching) & p.only & ~p.has
                p.retiring = False
        actions: list[PickerAction] = []
        for pid, p in list(parents.items()):
            allowed = p.only if pid in keep else 0
            if p.inflight:
                # its requests not started, outside what it may still be asked
                actions += book.withdraw(pid, allowed, self.have)
            if pid not in keep:
                p.retiring = True
                if p.inflight == 0:
                    parents.pop(pid, None)
        self._spares = self._spares or any(p.spare for p in parents.values())
        return actions

    def on_have(self, parent: PeerId, index: int) -> bool:
        """``parent`` now holds ``index``; True if that may give an idle slot work."""
        book = self._book
        p = book.parents.get(parent)
        if p is None:
            return False
        bit = (1 << index) & p.only
        p.has |= bit
        p.pending &= ~bit
        return bool(bit & ~self.have & ~book.requested) and book.inflight < self.policy.total

    def on_fetching(self, parent: PeerId, index: int) -> bool:
        """``parent`` has asked for ``index``: it may be asked for it too (cut-through)."""
        book = self._book
        p = book.parents.get(parent)
        if p is None:
            return False
        bit = (1 << index) & p.only & ~p.has
        p.pending |= bit
        return bool(bit & ~self.have & ~book.requested) and book.inflight < self.policy.total

    def on_started(self, parent: PeerId, index: int, now: float) -> None:
        """The parent began sending ``index``: the stall clock starts."""
        book = self._book
        for r in book.reqs.get(index, ()):
            if r.parent == parent and r.started < 0:
                r.started = now
        p = book.parents.get(parent)
        if p is not None:
            p.heard = now
            p.patience = 1

    def on_piece(
        self, parent: PeerId, index: int, now: float, *, ok: bool = True
    ) -> list[PickerAction]:
        """The piece arrived from ``parent``; ``ok`` says whether it matched its hash."""
        self._check(index)
        book = self._book
        req = book.find(index, parent)
        if req is None:
            return []  # cancelled before, or never asked: ignore
        if not ok:
            return self._fail(index, req, FailReason.BAD_PIECE, now)
        p = book.parents.get(parent)
        if p is not None:
            p.heard = p.delivered = now
            p.patience = 1
        book.remove(index, req)
        book.transition(index, PieceEvent.LANDED, self.have)
        started = req.started if req.started >= 0 else req.asked
        took = now - started
        a = self.policy.ewma
        self._mean = took if self._mean == 0.0 else (1 - a) * self._mean + a * took
        self.have |= 1 << index
        actions: list[PickerAction] = []
        p = book.parents.get(parent)  # (gone if it was retiring and this was its last)
        if p is not None and req.started >= 0:
            p.mean = took if p.samples == 0 else (1 - a) * p.mean + a * took
            p.samples += 1
            if self._relatively_slow(p):
                actions += self._drop_parent(parent, now, FailReason.SLOW, index)
        actions += book.landed(index)  # endgame duplicates cancelled
        return actions

    def on_failed(
        self, parent: PeerId, index: int, now: float, reason: FailReason = FailReason.UNREACHABLE
    ) -> list[PickerAction]:
        """A request ended without the piece (connection error, busy, piece missing)."""
        self._check(index)
        req = self._book.find(index, parent)
        if req is None:
            return []
        p = self._book.parents.get(parent)
        if p is not None and reason is FailReason.REFUSED:
            p.heard = now  # it answered: alive
        return self._fail(index, req, reason, now)

    def on_probe(self, parent: PeerId, alive: bool, now: float) -> list[PickerAction]:
        """The answer to ``ProbePeer`` (rule 7): alive, or gone (dropped, reported)."""
        p = self._book.parents.get(parent)
        if p is None:
            return []
        p.probing = False
        if alive:
            p.heard = now
            p.patience = min(p.patience * 2, MAX_PATIENCE)
            return []
        return self._drop_parent(parent, now, FailReason.UNREACHABLE, -1)

    def on_timer(self, now: float) -> list[PickerAction]:
        """Cancel stalled requests (rule 3), their pieces back to missing; probe silent
        parents (rule 7)."""
        limit = self._stall_limit()
        qt = self.policy.queue_timeout
        book = self._book
        stalled = [
            (i, r)
            for i, rs in book.reqs.items()
            for r in rs
            if (r.started >= 0 and now - r.started > limit)
            or (r.started < 0 and now - book.queued_since(r) > qt)
        ]
        actions: list[PickerAction] = []
        for i, r in stalled:
            if not any(x is r for x in book.reqs.get(i, ())):
                continue
            actions.append(Cancel(r.parent, i))
            parent = book.parents.get(r.parent)
            seed = parent is not None and parent.seed
            if r.started >= 0 or seed:
                # the seed goes at the origin's pace and is the only source of what it
                # has not handed out yet: re-ask it, never drop it
                why = FailReason.REFUSED if seed else FailReason.SLOW
                actions += self._fail(i, r, why, now)
            else:
                # a parent that delivered nothing for ``queue_timeout`` while requests
                # waited at it is stuck waiting itself (its own parent went): it is not
                # blamed (REFUSED), but the root is told, so that it re-parents the stripe
                actions += self._fail(i, r, FailReason.REFUSED, now)
                actions += self._drop_parent(r.parent, now, FailReason.REFUSED, i)
        quiet = self._silence_limit()
        for p in self._may_ping(book.flowing()):
            if now > self._probe_at(p, quiet):
                p.probing = True
                actions.append(ProbePeer(p.peer))
        return actions

    @staticmethod
    def _probe_at(p: Parent, quiet: float) -> float:
        """When rule 7 probes ``p``: ``quiet`` after its last sign of life, times the
        patience its answered probes earned it."""
        return p.heard + quiet * p.patience

    def _may_ping(self, flowing: set[PeerId]) -> list[Parent]:
        """Rule 7's parents; shared by the timer and ``next_deadline`` (one ignored spins)."""
        ps = self._book.parents.values()
        return [p for p in ps if p.inflight and not (p.probing or p.seed or p.peer in flowing)]

    # decisions ------------------------------------------------------------------------

    def requests(self, now: float) -> list[PickerAction]:
        """Fill idle request slots (rules 1, 2, 5, 6)."""
        pol = self.policy
        book = self._book
        if book.inflight >= pol.total or self.have == self.full:
            return []
        actions: list[PickerAction] = []
        free = self.wanted & ~self.have & ~book.requested
        if free:
            first = lowest(free)
            window = ((1 << pol.window) - 1) << first
            # one request at a time to the least-busy parent that can serve one, so that
            # requests (and so the load on parents' uplinks) spread over every parent
            primary = 0
            if self._spares:
                for p in book.parents.values():
                    if not p.spare and not p.retiring:
                        primary |= p.has | p.pending
            spare_free = free & ~primary
            ready = [
                p
                for p in book.parents.values()
                if not p.retiring and (p.has | p.pending) & (spare_free if p.spare else free)
            ]
            while ready and free and book.inflight < pol.total:
                p = min(ready, key=busy)
                lim = free & ~primary if p.spare else free
                held = p.has & lim
                avail = held or p.pending & lim
                if not avail or p.inflight >= pol.per_parent:
                    ready.remove(p)
                    continue
                w = avail & window
                # a queued read waits for the parent's own stream, which comes in index
                # order: queue on its next pieces, not on random ones it gets last
                index = lowest(w or avail) if w or not held else self._rarest(avail)
                actions.append(book.ask(p, index, now, self.have))
                free &= ~(1 << index)
        if not free and book.inflight < pol.total:
            self._endgame(now, actions)
        if (
            free
            and book.inflight < pol.total // 2
            and now - self._last_need >= pol.refresh_interval
        ):
            self._last_need = now
            actions.append(NeedParents(self.blob))
        return actions

    # internals ------------------------------------------------------------------------

    def _rarest(self, avail: int) -> int:
        best, best_n = -1, 1 << 30
        views = [p.has | p.pending for p in self._book.parents.values()]
        for _ in range(self.policy.samples):
            r = self._rng.randrange(self.count)
            x = avail >> r
            i = r + lowest(x) if x else lowest(avail)
            n = sum((v >> i) & 1 for v in views)
            if n < best_n or (n == best_n and i < best):
                best, best_n = i, n
        return best

    def _endgame(self, now: float, actions: list[PickerAction]) -> None:
        pol = self.policy
        book = self._book
        reqs = book.reqs
        dups = sum(len(rs) - 1 for rs in reqs.values())
        if dups >= pol.endgame:
            return
        for index in sorted(reqs, key=lambda i: min(r.asked for r in reqs[i])):
            if now - min(r.asked for r in reqs[index]) < self._mean:
                return  # the oldest is younger than a piece time: nothing is late yet
            asked = {r.parent for r in reqs[index]}
            for p in book.parents.values():
                if (
                    p.retiring
                    or p.peer in asked
                    or p.inflight >= pol.per_parent
                    or not (p.has >> index) & 1
                ):
                    continue
                actions.append(book.ask(p, index, now, self.have))
                dups += 1
                break
            if dups >= pol.endgame or book.inflight >= pol.total:
                return

    def _fail(self, index: int, req: Req, reason: FailReason, now: float) -> list[PickerAction]:
        self._book.lose(index, req, self.have)
        actions: list[PickerAction] = []
        if reason is not FailReason.REFUSED:
            actions += self._drop_parent(req.parent, now, reason, index)
        return actions

    def _drop_parent(
        self, parent: PeerId, now: float, reason: FailReason, index: int
    ) -> list[PickerAction]:
        """Stop using ``parent``: cancel its other requests, report it to the root."""
        if reason is FailReason.BAD_PIECE:
            self._banned[parent] = now + self.policy.ban_seconds
        actions = self._book.drop(parent, self.have)
        if actions is None:
            return []
        actions.append(ParentFailed(self.peer, self.blob, parent, reason, index))
        return actions

    def _relatively_slow(self, p: Parent) -> bool:
        """Rule 3b: far slower per piece than the median of the other parents."""
        pol = self.policy
        if pol.slow_ratio <= 0 or p.seed or p.samples < pol.slow_samples:
            return False
        others = [
            q.mean
            for q in self._book.parents.values()
            if q is not p and q.samples >= pol.slow_samples
        ]
        others.sort()
        if len(others) < 2:
            return False
        return p.mean > pol.slow_ratio * others[len(others) // 2]

    def _stall_limit(self) -> float:
        if self._mean == 0.0:  # no piece yet: nothing to compare with but a generous bound
            return max(self.policy.stall_floor, self.policy.first_piece_timeout)
        return max(self.policy.stall_floor, self.policy.stall_factor * self._mean)

    def _silence_limit(self) -> float:
        return max(self.policy.silence_floor, self.policy.silence_factor * self._mean)

    def _expire_bans(self, now: float) -> None:
        for pid in [p for p, t in self._banned.items() if t <= now]:
            del self._banned[pid]

    def _check(self, index: int) -> None:
        if not 0 <= index < self.count:
            raise PieceIndexError(f"piece {index} outside 0..{self.count - 1}")
