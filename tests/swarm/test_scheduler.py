"""The root's scheduler alone, clock passed in."""

from __future__ import annotations

from collections import Counter

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


def sched(**kw: int) -> Scheduler:
    s = Scheduler(SchedulerPolicy(**kw), seed=7)
    s.add_blob("b", N * PS, PS, "root", 0.0)
    return s


def assign(s: Scheduler, msg: Join | AskParents, now: float = 0.0) -> Assignment:
    a = s.handle(msg, now)
    assert isinstance(a, Assignment)
    return a


def names(a: Assignment) -> list[str]:
    return [o.peer for o in a.parents]


def test_first_agent_gets_the_seed_fetching_everything() -> None:
    s = sched()
    a = assign(s, Join("n1", "b"))
    (seed,) = a.parents
    assert seed.peer == "root"
    assert seed.have == 0 and seed.fetching == seed.only  # cut-through on the origin fetch
    assert "1 agents" in repr(s.swarm("b"))


def test_seed_children_get_disjoint_stripes_that_cover_every_piece() -> None:
    s = sched(stripes=4)
    onlys = []
    for i in range(4):
        a = assign(s, Join(f"n{i}", "b"))
        (seed,) = [o for o in a.parents if o.peer == "root"]
        onlys.append(seed.only)
    for x in range(4):
        for y in range(x + 1, 4):
            assert onlys[x] & onlys[y] == 0
    assert sum(onlys) == FULL
    # a fifth agent does not get the seed: its slots are taken and others are useful
    s.handle(Fetching("n0", "b", (0, 4)), 0.0)
    assert "root" not in names(assign(s, Join("n4", "b")))


def test_a_starved_seed_child_takes_the_unheld_stripes() -> None:
    s = sched(stripes=4)
    a = assign(s, Join("n0", "b"))
    assert a.parents[-1].only == mask_of(range(0, N, 4))
    a = assign(s, AskParents("n0", "b"))
    assert a.parents[-1].only == FULL


def test_cut_through_offers_a_parent_whose_pieces_are_in_flight() -> None:
    s = sched()
    assign(s, Join("x", "b"))
    s.handle(Fetching("x", "b", (0, 1, 2)), 0.1)
    a = assign(s, Join("y", "b"), 0.2)
    (x,) = [o for o in a.parents if o.peer == "x"]
    assert x.have == 0 and x.fetching == mask_of([0, 1, 2])
    s.handle(Have("x", "b", (0,)), 0.3)
    (x,) = [o for o in assign(s, AskParents("y", "b"), 0.4).parents if o.peer == "x"]
    assert x.have == 1 and x.fetching == mask_of([1, 2])


def test_same_zone_parents_are_preferred() -> None:
    s = sched(parents=5)
    for i in range(10):
        for zone in ("a", "b"):
            assign(s, Join(f"{zone}{i}", "b", zone=zone, have=FULL))
    a = assign(s, Join("me", "b", zone="a"))
    others = [o for o in a.parents if o.peer != "root"]
    assert len(others) >= 4
    assert all(o.zone == "a" for o in others)


def test_load_is_spread_over_parents() -> None:
    s = sched(parents=2, child_slots=2, sample=64)
    for i in range(8):
        assign(s, Join(f"full{i}", "b", have=FULL))
    count: Counter[str] = Counter()
    for i in range(8):
        for o in assign(s, Join(f"new{i}", "b")).parents:
            count[o.peer] += 1
    full = {p: c for p, c in count.items() if p.startswith("full")}
    assert len(full) == 8 and max(full.values()) <= 2  # all used, nobody above its slots


def test_bad_piece_bans_the_parent_for_the_reporter_then_for_all() -> None:
    s = sched(global_ban_reporters=2)
    assign(s, Join("bad", "b", have=FULL))
    for who in ("y", "z", "w"):
        assert "bad" in names(assign(s, Join(who, "b")))
    s.handle(ParentFailed("y", "b", "bad", FailReason.BAD_PIECE, 3), 1.0)
    assert "bad" not in names(assign(s, AskParents("y", "b"), 1.0))
    assert "bad" in names(assign(s, AskParents("w", "b"), 1.0))
    s.handle(ParentFailed("z", "b", "bad", FailReason.BAD_PIECE, 3), 2.0)
    assert "bad" not in names(assign(s, AskParents("w", "b"), 2.0))
    # bans end
    assert "bad" in names(assign(s, AskParents("w", "b"), 100.0))


def test_slow_parent_is_avoided() -> None:
    s = sched(parents=2, sample=64)
    assign(s, Join("slow", "b", have=FULL))
    assign(s, Join("quick", "b", have=FULL))
    assign(s, Join("x", "b"))
    s.handle(ParentFailed("x", "b", "slow", FailReason.SLOW, 1), 1.0)
    assert names(assign(s, Join("y", "b"), 1.5))[0] == "quick"


def test_complete_agent_frees_its_parents_and_dead_ones_vanish() -> None:
    s = sched()
    a = assign(s, Join("n", "b"))
    assert names(a) == ["root"]
    s.handle(Have("root", "b", tuple(range(N))), 1.0)
    s.handle(Have("n", "b", tuple(range(N))), 1.0)
    swarm = s.swarm("b")
    assert swarm.seed_children == 0 and swarm.complete == 1
    assert "n" in names(assign(s, Join("m", "b")))
    s.handle(PeerDead("n"), 2.0)
    assert "n" not in names(assign(s, AskParents("m", "b"), 2.0))
    s.handle(Leave("m", "b"), 3.0)
    assert swarm.agents() == 0
