"""The root's scheduler alone, clock passed in."""

from __future__ import annotations

import math
from typing import Any

from shoal.swarm import (
    AskParents,
    Assignment,
    FailReason,
    Fetching,
    Have,
    Join,
    Leave,
    ParentFailed,
    PeerDead,
    Scheduler,
    SchedulerPolicy,
    full_mask,
    mask_of,
)

PS = 1 << 20
N = 16  # pieces
FULL = full_mask(N)
STRIPE = [mask_of(range(s, N, 4)) for s in range(4)]


def sched(**kw: Any) -> Scheduler:
    s = Scheduler(SchedulerPolicy(**kw), seed=7)
    s.add_blob("b", N * PS, PS, "root", 0.0)
    return s


def assign(s: Scheduler, msg: Join | AskParents, now: float = 0.0) -> Assignment:
    a = s.handle(msg, now)
    assert isinstance(a, Assignment)
    return a


def names(a: Assignment) -> list[str]:
    return [o.peer for o in a.parents]


def join_all(s: Scheduler, n: int) -> dict[str, Assignment]:
    """Join n agents, applying pushed updates as the real shell would."""
    latest: dict[str, Assignment] = {}
    for i in range(n):
        a = assign(s, Join(f"n{i}", "b"))
        latest[a.peer] = a
        for u in s.take_updates(0.0):
            latest[u.peer] = u
    return latest


def stripe_parents(a: Assignment) -> dict[int, str]:
    out = {}
    for o in a.parents:
        if o.spare:
            continue
        for st, mask in enumerate(STRIPE):
            if o.only & mask == mask:
                out[st] = o.peer
    return out


def test_first_agent_gets_the_seed_for_every_stripe_fetching_everything() -> None:
    s = sched()
    (seed,) = assign(s, Join("n0", "b")).parents
    assert seed.peer == "root" and seed.only == FULL
    assert seed.have == 0 and seed.fetching == FULL  # cut-through on the origin fetch
    assert "1 agents" in repr(s.swarm("b"))


def test_the_seed_sends_each_stripe_to_one_child_once_the_forest_stands() -> None:
    s = sched(stripes=4)
    latest = join_all(s, 4)
    swarm = s.swarm("b")
    assert [len(k) for k in swarm.seed_kids] == [1, 1, 1, 1]
    assert [len(p) for p in swarm.provisional] == [0, 0, 0, 0]
    seed_only = [o.only for a in latest.values() for o in a.parents if o.peer == "root"]
    assert sorted(seed_only) == sorted(STRIPE)  # disjoint stripes covering every piece
    for a in latest.values():
        assert sorted(stripe_parents(a)) == [0, 1, 2, 3]  # a parent in every stripe


def test_forest_is_shallow_and_no_uplink_is_oversubscribed() -> None:
    s = sched(stripes=4)
    latest = join_all(s, 84)
    swarm = s.swarm("b")
    assert swarm.interior == [21, 21, 21, 21]
    kids: dict[str, int] = {}
    for a in latest.values():
        sp = stripe_parents(a)
        assert sorted(sp) == [0, 1, 2, 3]
        for p in sp.values():
            kids[p] = kids.get(p, 0) + 1
    assert kids.pop("root") == 4
    # a slot short while the trees fill: one more child for a few, never the seed
    assert max(kids.values()) <= 5 and sum(v == 5 for v in kids.values()) <= 8
    depth_limit = 2 + math.ceil(math.log(21, 4))
    assert "provisional [0, 0, 0, 0]" in repr(swarm)

    def depth(peer: str, st: int) -> int:
        d = 1
        while (p := stripe_parents(latest[peer])[st]) != "root":
            peer, d = p, d + 1
        return d

    assert max(depth(f"n{i}", st) for i in range(84) for st in range(4)) <= depth_limit


def test_cut_through_offers_what_a_parent_is_fetching() -> None:
    s = sched()
    latest = join_all(s, 5)
    (p4,) = [o for o in latest["n4"].parents if o.peer != "root"][:1]
    s.handle(Fetching(p4.peer, "b", tuple(range(N))), 0.1)
    s.handle(Have(p4.peer, "b", (0, 1, 2, 3)), 0.2)
    offer = next(o for o in assign(s, AskParents("n4", "b"), 0.3).parents if o.peer == p4.peer)
    assert offer.have == mask_of([0, 1, 2, 3]) & offer.only
    assert offer.fetching == FULL & ~mask_of([0, 1, 2, 3]) & offer.only


def test_same_zone_parents_are_preferred() -> None:
    s = sched()
    for i in range(16):
        assign(s, Join(f"{'ab'[i % 2]}{i}", "b", zone="ab"[i % 2]))
        s.take_updates(0.0)
    a = assign(s, Join("me", "b", zone="a"))
    zones = [o.zone for o in a.parents if o.peer != "root"]
    assert zones.count("a") >= 3 and zones.count("a") > zones.count("b")


def test_spares_are_flagged_and_are_not_tree_parents() -> None:
    s = sched(spares=2)
    join_all(s, 12)
    a = assign(s, AskParents("n11", "b"))
    spares = [o for o in a.parents if o.spare]
    assert len(spares) == 2
    assert not {o.peer for o in spares} & set(stripe_parents(a).values())
    assert all(o.only == -1 for o in spares)


def test_bad_piece_moves_the_reporter_away_then_bans_for_all() -> None:
    s = sched(global_ban_reporters=2)
    latest = join_all(s, 20)
    bad = stripe_parents(latest["n19"])[0]
    assert bad != "root"
    kids = [p for p, a in latest.items() if bad in stripe_parents(a).values()]
    s.handle(ParentFailed(kids[0], "b", bad, FailReason.BAD_PIECE, 3), 1.0)
    updates = {u.peer: u for u in s.take_updates(1.0)}
    # the reporter and every other child of the bad one get parents without it
    assert set(kids) <= set(updates)
    assert all(bad not in names(u) for p, u in updates.items() if p in kids)
    s.handle(ParentFailed(kids[1], "b", bad, FailReason.BAD_PIECE, 3), 2.0)
    s.take_updates(2.0)
    assert bad not in names(assign(s, Join("late", "b"), 2.0))


def test_slow_parent_loses_its_children_to_healthy_parents() -> None:
    s = sched()
    latest = join_all(s, 40)
    slow = stripe_parents(latest["n39"])[1]
    kids = {p for p, a in latest.items() if stripe_parents(a).get(1) == slow}
    s.handle(ParentFailed("n39", "b", slow, FailReason.SLOW, 1), 1.0)
    updates = {u.peer: u for u in s.take_updates(1.0)}
    assert set(updates) == kids  # every child of the slow one moved, the reporter too
    load: dict[str, int] = {}
    for u in updates.values():
        sp = stripe_parents(u)
        assert slow not in names(u) and sorted(sp) == [0, 1, 2, 3]
        load[sp[1]] = load.get(sp[1], 0) + 1
    # a slow peer gets no children while the report is fresh
    later = assign(s, Join("late", "b"), 2.0)
    assert slow not in names(later)


def test_dead_parent_children_are_pushed_new_parents() -> None:
    s = sched()
    latest = join_all(s, 40)
    victim = stripe_parents(latest["n39"])[2]
    orphans = {p for p, a in latest.items() if victim in names(a)}
    s.handle(PeerDead(victim), 1.0)
    updates = {u.peer: u for u in s.take_updates(1.0)}
    assert set(updates) == orphans
    for u in updates.values():
        assert victim not in names(u) and sorted(stripe_parents(u)) == [0, 1, 2, 3]


def test_complete_agent_frees_its_slots_and_leavers_vanish() -> None:
    s = sched()
    join_all(s, 4)
    swarm = s.swarm("b")
    s.handle(Have("root", "b", tuple(range(N))), 1.0)
    s.handle(Have("n3", "b", tuple(range(N))), 1.0)
    assert swarm.complete == 1
    assert assign(s, AskParents("n3", "b")).parents == ()
    s.handle(Leave("n3", "b"), 2.0)
    assert swarm.agents() == 3 and swarm.complete == 0
    assert "n3" not in names(assign(s, Join("n9", "b"), 2.0))


def test_a_parent_two_agents_cannot_reach_is_dead_for_everyone() -> None:
    """A stopped agent holds a stripe for many children; the first two that find it
    unreachable get it dropped for all, so the others are moved at once instead of at
    the root's 15 s silence rule."""
    s = sched(global_ban_reporters=2)
    for i in range(12):
        s.handle(Join(f"n{i}", "b"), 0.0)
    s.take_updates(0.0)
    swarm = s.swarm("b")
    victim = max(swarm.order, key=lambda p: len(swarm.members[p].kids))
    kids = sorted(swarm.members[victim].kids)
    assert len(kids) >= 2
    s.handle(ParentFailed(kids[0], "b", victim, FailReason.UNREACHABLE), 1.0)
    assert victim in swarm.members  # one report: maybe only that child's link
    s.handle(ParentFailed(kids[1], "b", victim, FailReason.UNREACHABLE), 1.5)
    assert victim not in swarm.members
    moved = {a.peer for a in s.take_updates(1.5)}
    assert set(kids) <= moved  # every child got a new parent set, not only the reporters
    for a in s.take_updates(1.5):
        assert all(o.peer != victim for o in a.parents)
    # it comes back: a join puts it in again
    assert s.handle(Join(victim, "b"), 30.0) is not None
    assert victim in swarm.members


def test_a_parent_that_still_calls_the_root_is_slow_not_dead() -> None:
    """On a saturated host an agent answers its peers' pings late but keeps calling the
    root: reports that it is unreachable must not drop it from every swarm (that sent
    32 agents on 2 cores to the origin) until it has been silent at the root too."""
    s = sched(global_ban_reporters=2, alive_window=3.0)
    for i in range(12):
        s.handle(Join(f"n{i}", "b"), 0.0)
    s.take_updates(0.0)
    swarm = s.swarm("b")
    victim = max(swarm.order, key=lambda p: len(swarm.members[p].kids))
    kids = sorted(swarm.members[victim].kids)
    s.seen(victim, 1.0)
    s.handle(ParentFailed(kids[0], "b", victim, FailReason.UNREACHABLE), 1.2)
    s.handle(ParentFailed(kids[1], "b", victim, FailReason.UNREACHABLE), 1.5)
    assert victim in swarm.members  # it called at 1.0: alive, its reporters ban it only
    s.handle(ParentFailed(kids[0], "b", victim, FailReason.UNREACHABLE), 4.2)
    s.handle(ParentFailed(kids[1], "b", victim, FailReason.UNREACHABLE), 4.5)
    assert victim not in swarm.members  # silent at the root for 3.5 s as well: dead
