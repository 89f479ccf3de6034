"""The piece picker alone, clock passed in."""

from __future__ import annotations

from collections.abc import Sequence

from shoal.swarm import (
    Cancel,
    FailReason,
    NeedParents,
    ParentFailed,
    ParentOffer,
    PickerPolicy,
    PiecePicker,
    ProbePeer,
    Request,
    full_mask,
    mask_of,
)

ALL16 = full_mask(16)


def offer(peer: str, have: int = ALL16, fetching: int = 0, only: int = -1) -> ParentOffer:
    return ParentOffer(peer, "", have, fetching, only)


def reqs(actions: Sequence[object]) -> list[tuple[str, int]]:
    return [(a.parent, a.index) for a in actions if isinstance(a, Request)]


def test_in_order_window_first_then_spread() -> None:
    pol = PickerPolicy(window=4, per_parent=8, total=8)
    p = PiecePicker("me", "b", 16, pol, seed=1)
    p.on_parents([offer("a")], 0.0)
    got = [i for _, i in reqs(p.requests(0.0))]
    assert got[:4] == [0, 1, 2, 3]  # the window, in order
    assert len(got) == 8 and len(set(got)) == 8
    assert all(i >= 4 for i in got[4:])  # beyond the window: spread
    assert "8 in flight" in repr(p)


def test_window_moves_and_contiguous_prefix_streams() -> None:
    pol = PickerPolicy(window=2, per_parent=2, total=2)
    p = PiecePicker("me", "b", 16, pol)
    p.on_parents([offer("a")], 0.0)
    assert reqs(p.requests(0.0)) == [("a", 0), ("a", 1)]
    p.on_piece("a", 1, 0.1)
    assert p.contiguous == 0
    assert reqs(p.requests(0.1)) == [("a", 2)]
    p.on_piece("a", 0, 0.2)
    assert p.contiguous == 2


def test_limits_per_parent_and_total() -> None:
    pol = PickerPolicy(per_parent=2, total=3)
    p = PiecePicker("me", "b", 16, pol)
    p.on_parents([offer("a"), offer("b"), offer("c")], 0.0)
    got = reqs(p.requests(0.0))
    assert len(got) == 3
    assert max(sum(1 for q, _ in got if q == x) for x in "abc") <= 2
    assert p.requests(0.0) == []


def test_cut_through_asks_a_parent_for_a_piece_it_is_still_fetching() -> None:
    p = PiecePicker("me", "b", 4, PickerPolicy(per_parent=4, total=4))
    p.on_parents([offer("a", have=0, fetching=mask_of([0]))], 0.0)
    assert reqs(p.requests(0.0)) == [("a", 0)]
    # news from the parent: it started fetching piece 1; the idle slot can use it
    assert p.on_fetching("a", 1)
    assert reqs(p.requests(0.1)) == [("a", 1)]
    # a queued request does not stall while the parent waits for the piece itself;
    # the silent parent is only asked whether it is alive
    assert p.on_timer(5.0) == [ProbePeer("a")]
    assert p.on_probe("a", True, 5.0) == []
    assert p.on_timer(5.1) == []


def test_a_parent_that_answers_probes_but_sends_nothing_is_probed_less_and_less() -> None:
    """Reads queued at a stripe parent that waits for its own parent: each probe it
    answers doubles the wait before the next (silence floor 0.5 s: 0.5, 1, 2, 2 s), and
    its first byte brings the wait back to the floor. A parent stopped while it waited is
    still found within 4 silence limits and a ping."""
    pol = PickerPolicy(per_parent=4, total=4, queue_timeout=60.0, silence_floor=0.5)
    p = PiecePicker("me", "b", 4, pol)
    p.on_parents([offer("a", have=0, fetching=full_mask(4))], 0.0)
    assert len(reqs(p.requests(0.0))) == 4
    t, gaps = 0.0, []
    for _ in range(4):
        deadline = p.next_deadline()
        assert deadline is not None
        assert p.on_timer(deadline - 0.01) == []  # not yet
        assert p.on_timer(deadline + 0.01) == [ProbePeer("a")]
        gaps.append(round(deadline - t, 2))
        t = deadline + 0.01
        assert p.on_probe("a", True, t) == []
    assert gaps == [0.5, 1.0, 2.0, 2.0]
    p.on_started("a", 0, t + 0.1)  # bytes: the floor again
    p.on_piece("a", 0, t + 0.2)
    deadline = p.next_deadline()
    assert deadline is not None and abs(deadline - (t + 0.2 + 0.5)) < 1e-9
    assert p.on_timer(deadline + 0.01) == [ProbePeer("a")]
    assert p.on_probe("a", False, deadline + 0.5) != []  # no answer: dropped


def test_a_silent_seed_is_not_pinged_and_sets_no_deadline_the_timer_ignores() -> None:
    """Reads queued at the root for pieces it has not fetched yet: the seed goes at the
    origin's pace, so rule 7 leaves it alone, and the next deadline is one the timer acts
    on (the queue timeout), not the silence that had passed: a deadline in the past that
    the timer ignores makes the agent's loop wake every 2 ms until the bytes flow."""
    p = PiecePicker("me", "b", 4, PickerPolicy(per_parent=4, total=4, queue_timeout=30.0))
    seed = ParentOffer("root", "", 0, full_mask(4), -1, seed=True)
    p.on_parents([seed], 0.0)
    assert len(reqs(p.requests(0.0))) == 4
    assert p.on_timer(5.0) == []
    deadline = p.next_deadline()
    assert deadline is not None and deadline > 5.0
    assert deadline == 30.0  # the queued reads' timeout


def test_prefers_what_a_parent_holds_over_what_it_fetches() -> None:
    p = PiecePicker("me", "b", 4, PickerPolicy(window=4, per_parent=1, total=4))
    p.on_parents([offer("a", have=mask_of([3]), fetching=mask_of([0, 1, 2]))], 0.0)
    assert reqs(p.requests(0.0)) == [("a", 3)]


def test_slow_parent_is_dropped_and_its_piece_asked_elsewhere() -> None:
    pol = PickerPolicy(window=4, per_parent=1, total=2, stall_factor=10, stall_floor=0.5)
    p = PiecePicker("me", "b", 16, pol)
    p.on_parents([offer("fast"), offer("slow")], 0.0)
    first = dict(reqs(p.requests(0.0)))
    for who, i in first.items():
        p.on_started(who, i, 0.0)
    # the fast parent delivers pieces every 0.1 s; the slow one sits on its piece
    t = 0.0
    i = first["fast"]
    for _ in range(5):
        t += 0.1
        p.on_piece("fast", i, t)
        (nxt,) = reqs(p.requests(t))
        assert nxt[0] == "fast"
        i = nxt[1]
        p.on_started("fast", i, t)
    assert abs(p.mean_piece_time - 0.1) < 1e-9
    assert p.on_timer(0.9) == []  # 10 x mean = 1.0 s not reached
    actions = p.on_timer(1.1)
    assert Cancel("slow", first["slow"]) in actions
    assert ParentFailed("me", "b", "slow", FailReason.SLOW, first["slow"]) in actions
    assert p.parents() == ["fast"]
    p.on_piece("fast", i, 1.1)
    again = reqs(p.requests(1.1))
    assert ("fast", first["slow"]) in again  # re-asked of the parent that is left


def test_stall_floor_holds_before_a_mean_exists() -> None:
    p = PiecePicker("me", "b", 4, PickerPolicy(stall_floor=2.0, first_piece_timeout=0.0))
    p.on_parents([offer("a", have=full_mask(4))], 0.0)
    (r, *_) = reqs(p.requests(0.0))
    p.on_started(*r, 0.0)
    assert p.on_timer(1.9) == []
    assert any(isinstance(a, Cancel) for a in p.on_timer(2.1))


def test_bad_piece_bans_the_parent_and_the_piece_is_asked_again() -> None:
    p = PiecePicker("me", "b", 4, PickerPolicy(per_parent=1, total=2, ban_seconds=60))
    full = full_mask(4)
    p.on_parents([offer("bad", have=full), offer("good", have=full)], 0.0)
    sent = dict(reqs(p.requests(0.0)))
    actions = p.on_piece("bad", sent["bad"], 0.1, ok=False)
    assert ParentFailed("me", "b", "bad", FailReason.BAD_PIECE, sent["bad"]) in actions
    # a new assignment that still lists the banned parent does not bring it back
    p.on_parents([offer("bad", have=full), offer("good", have=full)], 1.0)
    assert p.parents() == ["good"]
    p.on_piece("good", sent["good"], 1.0)
    assert reqs(p.requests(1.0)) == [("good", sent["bad"])]
    # after the ban it may come back
    p.on_parents([offer("bad", have=full), offer("good", have=full)], 61.0)
    assert sorted(p.parents()) == ["bad", "good"]


def test_unreachable_parent_frees_every_piece_it_held() -> None:
    p = PiecePicker("me", "b", 8, PickerPolicy(per_parent=3, total=6))
    p.on_parents([offer("a", have=full_mask(8)), offer("b", have=full_mask(8))], 0.0)
    sent = reqs(p.requests(0.0))
    on_a = [i for q, i in sent if q == "a"]
    actions = p.on_failed("a", on_a[0], 0.5)
    assert {a.index for a in actions if isinstance(a, Cancel)} == set(on_a[1:])
    assert p.in_flight == 3
    p.on_piece("b", next(i for q, i in sent if q == "b"), 0.6)
    assert reqs(p.requests(0.6))[0] == ("b", min(on_a))


def test_refused_request_keeps_the_parent() -> None:
    p = PiecePicker("me", "b", 4, PickerPolicy(per_parent=1, total=1))
    p.on_parents([offer("a", have=full_mask(4))], 0.0)
    ((_, i),) = reqs(p.requests(0.0))
    assert p.on_failed("a", i, 0.1, FailReason.REFUSED) == []
    assert reqs(p.requests(0.1)) == [("a", i)]


def test_endgame_duplicates_and_cancels_the_loser() -> None:
    p = PiecePicker("me", "b", 2, PickerPolicy(per_parent=1, total=4, endgame=2))
    p.on_parents([offer("a", have=3), offer("b", have=3), offer("c", have=3)], 0.0)
    sent = reqs(p.requests(0.0))
    first, dup = sent[:2], sent[2:]
    assert sorted(i for _, i in first) == [0, 1]
    # everything is requested and a slot is idle: the oldest request is duplicated
    assert [q for q, _ in dup] == ["c"]
    i = dup[0][1]
    actions = p.on_piece("c", i, 0.1)
    (orig,) = [q for q, j in first if j == i]
    assert actions == [Cancel(orig, i)]


def test_starving_asks_for_parents_rate_limited() -> None:
    p = PiecePicker("me", "b", 4, PickerPolicy(refresh_interval=1.0))
    p.on_parents([offer("a", have=0)], 0.0)
    assert p.requests(0.0) == [NeedParents("b")]
    assert p.requests(0.5) == []
    assert p.requests(1.0) == [NeedParents("b")]


def test_stripe_limit_applies_to_later_news() -> None:
    p = PiecePicker("me", "b", 4, PickerPolicy())
    p.on_parents([offer("seed", have=0, fetching=mask_of([0, 2]), only=mask_of([0, 2]))], 0.0)
    assert not p.on_have("seed", 1)
    assert sorted(i for _, i in reqs(p.requests(0.0))) == [0, 2]


def test_first_piece_gets_a_generous_limit() -> None:
    p = PiecePicker("me", "b", 4, PickerPolicy(stall_floor=0.5, first_piece_timeout=30.0))
    p.on_parents([offer("a", have=full_mask(4))], 0.0)
    (r, *_) = reqs(p.requests(0.0))
    p.on_started(*r, 0.0)
    assert p.on_timer(10.0) == []  # a big first piece on a busy link is not a stall
    assert any(isinstance(a, Cancel) for a in p.on_timer(31.0))


def test_a_new_parent_set_withdraws_queued_requests_it_no_longer_covers() -> None:
    """The seed stands in for a stripe until its first interior node joins; requests
    queued at the seed for that stripe must move to the new parent, or the seed sends
    the same piece to every agent that had queued on it."""
    pol = PickerPolicy(window=4, per_parent=4, total=8)
    p = PiecePicker("me", "b", 8, pol)
    everything = offer("seed", have=0, fetching=ALL16)
    p.on_parents([everything], 0.0)
    assert sorted(reqs(p.requests(0.0))) == [("seed", i) for i in range(4)]
    p.on_started("seed", 0, 0.1)  # piece 0's bytes flow: that request stays
    stripe0 = offer("seed", have=0, fetching=ALL16, only=mask_of([0, 2, 4, 6]))
    actions = p.on_parents([stripe0, offer("x", have=mask_of([1, 3, 5, 7]))], 0.2)
    # 1 and 3 are no longer the seed's to give; 2 still is, and stays queued there
    assert sorted((a.parent, a.index) for a in actions if isinstance(a, Cancel)) == [
        ("seed", 1),
        ("seed", 3),
    ]
    assert {i for q, i in reqs(p.requests(0.2)) if q == "x"} >= {1, 3}
    # a parent left out entirely: its queued requests go, its started ones finish
    actions = p.on_parents([offer("x", have=ALL16)], 0.3)
    cancelled = {(a.parent, a.index) for a in actions if isinstance(a, Cancel)}
    assert ("seed", 2) in cancelled and ("seed", 0) not in cancelled
    assert {q for q, _ in cancelled} == {"seed"}
    p.on_piece("x", 1, 0.35)
    assert ("x", 2) in reqs(p.requests(0.35))  # the withdrawn piece, asked of x
    p.on_piece("seed", 0, 0.4)
    assert p.have & 1


def test_pieces_a_parent_is_still_fetching_are_queued_in_its_stream_order() -> None:
    # a stripe parent offered as fetching its whole stripe (the odd pieces), holding
    # none yet: beyond the window, queue on the pieces it receives next, not at random
    pol = PickerPolicy(window=2, per_parent=3, total=12)
    p = PiecePicker("me", "b", 256, pol, seed=7)
    odd = mask_of(range(1, 256, 2))
    p.on_parents([offer("a", have=0, fetching=odd, only=odd)], 0.0)
    assert reqs(p.requests(0.0)) == [("a", 1), ("a", 3), ("a", 5)]
