"""The download machine's rules, event by event (no IO: time and answers passed in)."""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from shoal.swarm import (
    Abandoned,
    BlobDownload,
    BlobFailure,
    BlobView,
    DownloadPolicy,
    Fail,
    FailReason,
    FetchError,
    Fetching,
    FetchOrigin,
    Finish,
    Have,
    JoinRoot,
    OpenBlob,
    ParentFailed,
    ParentOffer,
    Phase,
    PickerPolicy,
    ProbeRoot,
    Request,
    RequestHashes,
    RequestVerdict,
    Store,
    full_mask,
    mask_of,
)

BLOB = "sha256:" + "cd" * 32
PIECE = 1 << 20
H = b"\x11" * 32


def view(
    *, pieces: int = 4, hashes: int = 4, parents: Sequence[ParentOffer] = (), **kw: object
) -> BlobView:
    return BlobView(
        BLOB,
        size=pieces * PIECE,
        piece_size=PIECE,
        hashes=(H,) * hashes,
        seed="root:1",
        parents=tuple(parents),
        **kw,  # type: ignore[arg-type]
    )


def parent(peer: str, pieces: int = 4) -> ParentOffer:
    return ParentOffer(peer, "", full_mask(pieces), 0, -1)


def machine(roots: Sequence[str] = ("r1", "r2"), **kw: object) -> BlobDownload:
    pol = msgspec.structs.replace(DownloadPolicy(), **kw) if kw else DownloadPolicy()
    picker = PickerPolicy(per_parent=4, total=4)
    return BlobDownload("me", BLOB, roots, policy=pol, picker=picker, root_timeout=5.0)


def phase(m: BlobDownload) -> Phase:
    return m.phase  # read afresh: the machine moves between the asserts


def of(kind: type, actions: Sequence[object]) -> list[object]:
    return [a for a in actions if isinstance(a, kind)]


def joined(m: BlobDownload, **kw: object) -> list[object]:
    assert m.start(0.0) == [JoinRoot("r1", 0)]
    return list(m.on_joined("r1", view(parents=[parent("p1")], **kw), 0.0))  # type: ignore[arg-type]


def test_a_join_opens_the_blob_and_asks_parents_for_pieces_in_order() -> None:
    m = machine()
    acts = joined(m)
    assert acts[0] == OpenBlob(4 * PIECE, PIECE)
    assert [(r.parent, r.index) for r in of(Request, acts)] == [("p1", i) for i in range(4)]  # type: ignore[attr-defined]
    assert phase(m) is Phase.SWARMING and m.root == "r1"


def test_a_slow_root_is_asked_again_a_refusing_one_is_skipped_then_the_origin() -> None:
    m = machine(join_tries=3)
    m.start(0.0)
    assert m.on_root_silent("r1", True, 1.0) == [JoinRoot("r1", 0)]  # busy: again
    assert m.on_root_silent("r1", True, 2.0) == [JoinRoot("r1", 0)]
    assert m.on_root_silent("r1", True, 3.0) == [JoinRoot("r2", 0)]  # tries used up
    acts = m.on_root_silent("r2", False, 3.1)  # refused: no point in waiting
    assert acts == [FetchOrigin(-1, "no root answered")]
    assert phase(m) is Phase.ORIGIN


def test_a_root_that_cannot_reach_the_origin_sends_the_agent_there_by_code() -> None:
    m = machine()
    m.start(0.0)
    failed = BlobView(BLOB, failure=BlobFailure.ORIGIN_UNAVAILABLE, reason="timed out")
    acts = m.on_joined("r1", failed, 0.1)
    assert of(FetchOrigin, acts) and phase(m) is Phase.ORIGIN
    m2 = machine()
    m2.start(0.0)
    bad = BlobView(BLOB, failure=BlobFailure.DIGEST_MISMATCH, reason="hashes to x")
    assert of(Fail, m2.on_joined("r1", bad, 0.1)) and phase(m2) is Phase.FAILED


def test_a_root_whose_calls_are_slow_but_pieces_come_is_not_lost() -> None:
    """Behind its own full uplink a root's control port answers late (N=32 at 25 Mbit/s:
    every agent doubted it and went to the origin); a piece it sent proves it runs."""
    m = machine(("r1",))
    assert m.start(0.0) == [JoinRoot("r1", 0)]
    seed = ParentOffer("root:1", "", 0, full_mask(4), seed=True)
    m.on_joined("r1", view(parents=[seed]), 0.0)
    m.on_root_silent("r1", True, 1.0)
    m.on_probe_root("r1", False, False, 1.1)  # no answer, not refused
    ticks(m, 1.1, 3.0)
    assert m.on_received("root:1", 0, 3.0) == [Store("root:1", 0, H)]
    m.on_stored("root:1", 0, True, 3.0)
    ticks(m, 3.0, 7.0)  # 6 s after the doubt began: lost, had the piece not come
    assert phase(m) is Phase.SWARMING
    # a piece from an agent parent does not clear the doubt (the parents run whether
    # the root does or not), but the swarm still delivers: the loss waits
    m.on_root_silent("r1", True, 7.0)
    m.on_probe_root("r1", False, False, 7.1)
    m.on_parents([parent("p1")], 7.2)
    m.on_received("p1", 1, 8.0)
    m.on_stored("p1", 1, True, 8.0)
    ticks(m, 8.0, 12.9)  # 5.9 s of doubt, a piece 4.9 s ago
    assert phase(m) is Phase.SWARMING
    acts = ticks(m, 12.9, 13.1)
    assert phase(m) is Phase.ORIGIN
    assert of(FetchOrigin, acts) == [FetchOrigin(mask_of([2, 3]), "every root is gone")]


def test_pieces_wait_for_their_hash_and_are_stored_against_it() -> None:
    m = machine()
    m.start(0.0)
    m.on_joined("r1", view(hashes=1, parents=[parent("p1")]), 0.0)
    assert m.on_received("p1", 0, 0.1) == [Store("p1", 0, H)]
    assert m.on_received("p1", 1, 0.1) == [RequestHashes("r1", 1, 2.0)]  # unknown: ask
    assert m.on_received("p1", 2, 0.1) == []  # one ask at a time
    more = BlobView(BLOB, 4 * PIECE, PIECE, hashes_from=1, hashes=(H, H))
    assert m.on_hashes(more, 0.2) == [Store("p1", 1, H), Store("p1", 2, H)]


def test_stored_pieces_are_reported_and_the_end_waits_for_the_roots_verdict() -> None:
    m = machine()
    joined(m)
    acts: list[object] = []
    for i in range(4):
        acts += m.on_started("p1", i, 0.1)
        acts += m.on_stored("p1", i, True, 0.2)
    assert of(Fetching, acts) and len(of(Have, acts)) == 4
    assert acts[-1] == RequestVerdict("r1")
    assert phase(m) is Phase.FINISHING
    not_yet = view()
    assert m.on_verdict(not_yet, 0.3) == []
    assert m.tick(0.3 + m.policy.verdict_poll) == [RequestVerdict("r1")]
    assert m.on_verdict(view(complete=True), 0.4) == [Finish(whole=True, verify=False)]
    assert m.ended


def test_a_bad_piece_bans_the_parent_and_is_asked_again() -> None:
    m = machine()
    joined(m)
    acts = m.on_stored("p1", 0, False, 0.2)
    failed = of(ParentFailed, acts)
    assert failed and failed[0].reason is FailReason.BAD_PIECE  # type: ignore[attr-defined]
    assert Abandoned("me", BLOB, (0,)) in acts


def test_fetch_errors_are_codes_busy_frees_the_piece_unreachable_drops_the_parent() -> None:
    m = machine()
    m.start(0.0)
    m.on_joined("r1", view(parents=[parent("p1"), parent("p2")]), 0.0)
    busy = m.on_fetch_failed("p1", 0, FetchError.BUSY, 0.1)
    assert not of(ParentFailed, busy)  # a healthy parent that said "not now"
    gone = m.on_fetch_failed("p2", 1, FetchError.UNREACHABLE, 0.2)
    reasons = [a.reason for a in of(ParentFailed, gone)]  # type: ignore[attr-defined]
    assert reasons == [FailReason.UNREACHABLE]


def test_a_root_that_refuses_probes_is_lost_and_its_blob_moves_to_the_next_root() -> None:
    m = machine(refused_probes=3)
    joined(m)
    m.on_stored("p1", 0, True, 0.1)
    assert m.on_root_silent("r1", False, 1.0) == [ProbeRoot("r1")]
    assert m.on_probe_root("r1", False, True, 1.0) == []
    assert of(ProbeRoot, m.tick(1.0 + m.policy.probe_interval)) == [ProbeRoot("r1")]
    m.on_probe_root("r1", False, True, 1.3)
    m.tick(1.5)
    acts = m.on_probe_root("r1", False, True, 1.5)
    assert of(JoinRoot, acts) == [JoinRoot("r2", mask_of([0]))]  # what is here goes along
    assert phase(m) is Phase.JOINING
    # the next root takes over; the parents' answers still count
    acts = m.on_joined("r2", view(parents=[parent("p3")]), 1.6)
    assert m.root == "r2" and phase(m) is Phase.SWARMING


def ticks(m: BlobDownload, start: float, end: float, step: float = 0.2) -> list[object]:
    """The driver's ticks from ``start`` to ``end`` (it ticks at least every 0.25 s)."""
    out: list[object] = []
    t = start
    while t < end - 1e-9:
        t = min(t + step, end)
        out += m.tick(t)
    return out


def test_a_silent_root_is_given_root_timeout_and_an_answering_one_is_trusted_again() -> None:
    m = machine(("r1",))
    joined(m)
    m.on_root_silent("r1", True, 1.0)
    m.on_probe_root("r1", True, False, 1.1)
    ticks(m, 1.1, 7.0)
    assert phase(m) is Phase.SWARMING  # the doubt was cleared: not lost
    m.on_root_silent("r1", True, 7.0)
    m.on_probe_root("r1", False, False, 7.1)  # no answer, not refused: loaded, maybe
    acts = ticks(m, 7.1, 11.9)
    assert phase(m) is Phase.SWARMING
    acts = ticks(m, 11.9, 12.1)  # 5 s after the doubt began
    assert phase(m) is Phase.ORIGIN
    assert of(FetchOrigin, acts) == [FetchOrigin(full_mask(4), "every root is gone")]


def test_with_no_root_left_only_the_missing_pieces_come_from_the_origin() -> None:
    m = machine(("r1",), refused_probes=1)
    joined(m)
    m.on_stored("p1", 0, True, 0.1)
    m.on_stored("p1", 2, True, 0.1)
    m.on_root_silent("r1", False, 1.0)
    acts = m.on_probe_root("r1", False, True, 1.0)
    assert of(FetchOrigin, acts) == [FetchOrigin(mask_of([1, 3]), "every root is gone")]
    assert m.on_origin_done(True, "", 2.0) == [Finish(whole=True, verify=True)]


def test_a_range_wants_only_its_pieces_and_lingers_for_more() -> None:
    m = BlobDownload("me", BLOB, ["r1"], wanted=0, picker=PickerPolicy(per_parent=4, total=4))
    m.start(0.0)
    acts = m.on_joined("r1", view(parents=[parent("p1")]), 0.0)
    assert not of(Request, acts) and phase(m) is Phase.LINGERING
    acts = m.want(mask_of([2]), 0.1)
    assert [(r.index) for r in of(Request, acts)] == [2]  # type: ignore[attr-defined]
    m.on_stored("p1", 2, True, 0.2)
    assert phase(m) is Phase.LINGERING
    assert m.tick(0.2 + m.policy.linger) == [Finish(whole=False, verify=False)]


def test_a_stopped_process_blames_nobody_and_joins_again() -> None:
    m = machine()
    joined(m)
    m.on_started("p1", 0, 0.1)
    acts = m.tick(25.0)  # nothing ran for 25 s: SIGSTOP and SIGCONT
    assert not of(ParentFailed, acts)
    assert of(JoinRoot, acts) == [JoinRoot("r1", 0)]


def test_a_root_that_forgot_the_agent_gets_a_new_join() -> None:
    m = machine()
    joined(m)
    m.on_stored("p1", 1, True, 0.1)
    assert m.on_forgotten(0.2) == [JoinRoot("r1", mask_of([1]))]


def test_a_piece_arriving_asks_for_its_chunk_hashes_once_and_learns_them() -> None:
    """Bytes that start before their chunk hashes are known ask the root for them (from
    the first such piece, though its piece hash is known), so the piece can be checked
    and passed on while it arrives; an answer with none (``b""``) ends the want."""
    m = machine()
    m.start(0.0)
    m.on_joined("r1", view(hashes=2, parents=[parent("p1")]), 0.0)  # no chunks in a join
    assert m.book.chunks_of(0) is None
    started = m.on_started("p1", 0, 0.1)
    assert of(RequestHashes, started) == [RequestHashes("r1", 0, 2.0)]
    assert of(RequestHashes, m.on_started("p1", 1, 0.1)) == []  # one ask at a time
    c0, c1 = b"\x01" * 64, b""
    answer = BlobView(BLOB, 4 * PIECE, PIECE, hashes_from=0, hashes=(H, H), chunks=(c0, c1))
    assert m.on_hashes(answer, 0.2) == []
    assert (m.book.chunks_of(0), m.book.chunks_of(1)) == (c0, b"")
    assert not m.book.waiting  # nothing left to ask for
    assert m.on_received("p1", 0, 0.3) == [Store("p1", 0, H)]
