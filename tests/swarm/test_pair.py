"""Scheduler and pickers paired through an in-memory loop (h11 ConnectionPair style).

Every transfer takes ``PIECE_TIME`` once the parent holds the piece; the root's pieces
arrive from the "origin" one per ``ORIGIN_TIME``. No network model: this checks the
message contract between the two halves, not performance (that is ``shoal sim``).
"""

from __future__ import annotations

import functools
import heapq
import itertools
from collections import defaultdict
from collections.abc import Callable

from shoal.swarm import (
    AskParents,
    Assignment,
    Cancel,
    FailReason,
    Fetching,
    Have,
    Join,
    NeedParents,
    ParentFailed,
    PickerAction,
    PiecePicker,
    Request,
    Scheduler,
)

PIECES = 24
PIECE_TIME = 0.010
ORIGIN_TIME = 0.004
BLOB = "sha256:" + "ab" * 32
REFUSED = FailReason.REFUSED


class Loop:
    def __init__(self, agents: int, *, bad: str = "", slow: str = "") -> None:
        self.now = 0.0
        self.q: list[tuple[float, int, Callable[[], None]]] = []
        self.seq = itertools.count()
        self.s = Scheduler(seed=3)
        self.s.add_blob(BLOB, PIECES, 1, "root", 0.0)
        self.have: dict[str, int] = defaultdict(int)
        self.waiting: dict[tuple[str, int], list[str]] = defaultdict(list)
        self.children: dict[str, set[str]] = defaultdict(set)
        self.cancelled: set[tuple[str, str, int]] = set()
        self.bad, self.slow = bad, slow
        self.reports: list[ParentFailed] = []
        self.root_sent = 0
        self.pickers = {f"n{i}": PiecePicker(f"n{i}", BLOB, PIECES, seed=i) for i in range(agents)}
        for i in range(PIECES):
            self.at((i + 1) * ORIGIN_TIME, functools.partial(self.landed, "root", i))
        for name in self.pickers:
            self.assign(self.s.handle(Join(name, BLOB), 0.0))

    def at(self, t: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self.q, (t, next(self.seq), fn))

    def assign(self, a: Assignment | None) -> None:
        assert a is not None
        for o in a.parents:
            self.children[o.peer].add(a.peer)
        self.act(a.peer, self.pickers[a.peer].on_parents(a.parents, self.now))
        for update in self.s.take_updates(self.now):  # pushed by the root
            self.assign(update)

    def act(self, me: str, actions: list[PickerAction]) -> None:
        p = self.pickers[me]
        actions = actions + p.requests(self.now)
        for a in actions:
            if isinstance(a, Request):
                if self.have[a.parent] >> a.index & 1:
                    self.send(a.parent, me, a.index)
                else:
                    self.waiting[(a.parent, a.index)].append(me)
            elif isinstance(a, Cancel):
                self.cancelled.add((a.parent, me, a.index))
                # our own fetch of the piece is gone: children queued on it are refused
                for c in self.waiting.pop((me, a.index), []):
                    self.act(c, self.pickers[c].on_failed(me, a.index, self.now, REFUSED))
            elif isinstance(a, ParentFailed):
                self.reports.append(a)
                self.s.handle(a, self.now)
                for update in self.s.take_updates(self.now):
                    self.assign(update)
            elif isinstance(a, NeedParents):
                self.assign(self.s.handle(AskParents(me, BLOB), self.now))

    def send(self, parent: str, child: str, i: int) -> None:
        # bytes flow: the child may now be named as a source of the piece (cut-through);
        # announcing only started fetches keeps waits one piece long and cycle-free
        self.root_sent += parent == "root"
        self.pickers[child].on_started(parent, i, self.now)
        self.s.handle(Fetching(child, BLOB, (i,)), self.now)
        for c in self.children[child]:
            self.pickers[c].on_fetching(child, i)
        took = PIECE_TIME * (100 if parent == self.slow else 1)
        self.at(self.now + took, lambda: self.deliver(parent, child, i))

    def deliver(self, parent: str, child: str, i: int) -> None:
        if (parent, child, i) in self.cancelled:
            self.cancelled.discard((parent, child, i))
            return
        ok = parent != self.bad
        self.act(child, self.pickers[child].on_piece(parent, i, self.now, ok=ok))
        if ok and not self.have[child] >> i & 1:
            self.landed(child, i)

    def landed(self, who: str, i: int) -> None:
        self.have[who] |= 1 << i
        self.s.handle(Have(who, BLOB, (i,)), self.now)
        for c in self.waiting.pop((who, i), []):
            self.send(who, c, i)
        for c in self.children[who]:
            if self.pickers[c].on_have(who, i):
                self.act(c, [])

    def tick(self) -> None:
        for name, p in self.pickers.items():
            self.act(name, p.on_timer(self.now))
        if not all(p.done for p in self.pickers.values()):
            self.at(self.now + 0.05, self.tick)

    def run(self, until: float = 30.0) -> float:
        self.at(0.05, self.tick)
        while self.q and self.now < until:
            self.now, _, fn = heapq.heappop(self.q)
            fn()
            if all(p.done for p in self.pickers.values()):
                return self.now
        raise AssertionError(f"not done by {self.now}: {list(self.pickers.values())}")


def test_small_swarm_completes_and_origin_is_read_once() -> None:
    loop = Loop(12)
    t = loop.run()
    full = (1 << PIECES) - 1
    assert all(loop.have[n] == full for n in loop.pickers)
    assert loop.s.swarm(BLOB).complete == 12
    # bounded by the origin stream plus a few piece times, far below 12 serial copies
    assert t < PIECES * ORIGIN_TIME + 20 * PIECE_TIME
    # the root sent each piece about once, plus what the first joiners asked of it
    # while it stood in for stripes that had no interior node yet
    assert loop.root_sent <= 2 * PIECES


def test_swarm_survives_a_parent_sending_bad_pieces() -> None:
    loop = Loop(8, bad="n0")
    loop.run()
    bad = [r for r in loop.reports if r.parent == "n0"]
    assert bad and all(r.reason.value == "bad-piece" for r in bad)


def test_swarm_routes_around_a_slow_parent() -> None:
    loop = Loop(8, slow="n0")  # the first seed child: it holds a stripe
    t = loop.run()
    assert any(r.parent == "n0" and r.reason.value == "slow" for r in loop.reports)
    assert t < 2.0  # one stall (0.5 s floor) and a refresh, not 100 x the piece time
