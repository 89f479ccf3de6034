"""One blob download at an agent, as a pure state machine: events in, actions out.

The agent (``shoal.agent.download``) and the simulator (``shoal.sim.engine``) both drive
this class; they only carry out what it returns (``actions``), feed back what happened
(``on_*``) and call ``tick(now)`` by ``next_deadline()``. Time is always passed in. The
piece choices themselves are the ``PiecePicker``'s; this class owns the rest of a
download's rules: which root, when to ask it what, when to doubt it, when to trust a
piece, when to go to the origin.

Phases and the moves between them: ``phases``.

Rules:

1. Roots in rendezvous order (``placement.rank_roots``): the first owns the blob; joins
   are retried and roots skipped as ``rootlink`` says.
2. A piece is trusted only against the root's hash: received bytes wait for it in the
   ``hashbook`` and are then handed to ``Store``.
3. A root doubted and then lost (``rootlink``): its blob moves to the next root in
   rendezvous order, which the download joins with the pieces it holds; the requests out
   to parents go on. With no root left, what is missing comes from the origin, nothing
   more (``FetchOrigin(pieces)``).
4. Peer fetch errors carry codes (``FetchError``); ``phases.REASON`` says what each means for
   the parent: unreachable or broken -> dropped and reported; busy or piece missing ->
   only the piece is asked elsewhere. No decision reads message text.
5. A clock jump (``tick`` finds more than ``freeze_gap`` since the last event: the
   process was stopped) blames nobody: every picker clock moves on by the gap, and the
   download joins its root again (the root may have dropped it as silent meanwhile).
6. Reports go to the current root as the picker's messages: ``Fetching`` when a piece's
   bytes start, ``Have`` when it is stored, ``Abandoned`` when no request for a piece is
   left, ``ParentFailed`` from the picker.
"""

from __future__ import annotations

from collections.abc import Sequence

from shoal.config import DownloadPolicy, PickerPolicy
from shoal.swarm.actions import (
    Action,
    Fail,
    FetchOrigin,
    Finish,
    JoinRoot,
    OpenBlob,
    ProbeRoot,
    RequestHashes,
    RequestParents,
    RequestVerdict,
    Store,
)
from shoal.swarm.hashbook import HashBook
from shoal.swarm.messages import (
    Abandoned,
    BlobFailure,
    BlobView,
    Cancel,
    FetchError,
    Fetching,
    Have,
    NeedParents,
    ParentFailed,
    ParentOffer,
    PeerId,
    PickerAction,
)
from shoal.swarm.phases import PHASES, REASON, Phase
from shoal.swarm.picker import PiecePicker
from shoal.swarm.pieces import full_mask, piece_count
from shoal.swarm.rootlink import Due, RootLink

#: seconds without any event, when the shell ticks on time, that mean the process was
#: stopped (rule 5); well above a loaded event loop's worst lag seen here (~1 s)
FREEZE_GAP = 3.0
#: seconds between checks while idle slots wait for parents (the picker rate-limits asks)
IDLE_CHECK = 0.25


class BlobDownload:
    """The download of one blob by one agent; see the module docstring."""

    def __init__(
        self,
        peer: PeerId,
        blob: str,
        roots: Sequence[PeerId],
        *,
        policy: DownloadPolicy | None = None,
        picker: PickerPolicy | None = None,
        root_timeout: float = 5.0,
        have: int = 0,
        wanted: int = -1,
        seed: int = 0,
    ) -> None:
        self.peer = peer
        self.blob = blob
        self.policy = policy or DownloadPolicy()
        self.picker_policy = picker or PickerPolicy()
        self.phase = Phase.JOINING
        self.link = RootLink(roots, self.policy, root_timeout)
        self.book = HashBook(self.policy)
        self.picker: PiecePicker | None = None
        self.size = 0
        self.piece_size = 0
        self.failure: BlobFailure | None = None
        self.reason = ""
        self._have = have  # before the geometry is known; then the picker's
        self._wanted = wanted  # -1 = every piece
        self._seed = seed
        self._parents_ask = False
        self._linger_until = 0.0
        self._last = float("nan")  # time of the last event (rule 5)

    def __repr__(self) -> str:
        return f"<BlobDownload {self.blob[:19]} {self.phase.value} {self.link!r} {self.picker!r}>"

    # what the shell reads ------------------------------------------------------------

    @property
    def root(self) -> PeerId:
        """Where reports and asks go ("" between roots: reports are then dropped)."""
        return self.link.root

    @property
    def hashes(self) -> list[bytes | None]:
        return self.book.hashes

    @property
    def have(self) -> int:
        return self.picker.have if self.picker is not None else self._have

    @property
    def wanted(self) -> int:
        return self.picker.wanted if self.picker is not None else self._wanted

    @property
    def whole(self) -> bool:
        """The whole blob is wanted (not an on-demand range)."""
        if self.picker is None:
            return self._wanted == -1
        return self.picker.wanted == self.picker.full

    @property
    def ended(self) -> bool:
        return self.phase is Phase.DONE or self.phase is Phase.FAILED

    def next_deadline(self) -> float | None:
        """When ``tick`` has something to do at the latest; ``None``: only events."""
        if self.ended:
            return None
        times = self.link.deadlines()
        pk = self.picker
        if pk is not None and self.phase is Phase.SWARMING:
            t = pk.next_deadline()
            if t is not None:
                times.append(t)
            if pk.idle:
                times.append(self._last + IDLE_CHECK)
        if self.book.waiting and not self.book.asking:
            times.append(self.book.after)
        if self.phase is Phase.FINISHING and not self.book.verdict_out:
            times.append(self.book.verdict_after)
        if self.phase is Phase.LINGERING:
            times.append(self._linger_until)
        return min(times) if times else None

    # events: start, wants, time -----------------------------------------------------

    def start(self, now: float) -> list[Action]:
        self._last = now
        return self._join_next(first=True)

    def want(self, mask: int, now: float) -> list[Action]:
        """These pieces are wanted too (``-1``: all); a lingering download goes on."""
        self._last = now
        if self.picker is None:
            self._wanted = -1 if mask == -1 or self._wanted == -1 else self._wanted | mask
            return []
        self.picker.want(mask)
        if self.phase is Phase.LINGERING and not self.picker.satisfied:
            self._move(Phase.SWARMING)
            return self._pump(now)
        return []

    def tick(self, now: float) -> list[Action]:
        if self.ended:
            return []
        actions: list[Action] = []
        if now - self._last > FREEZE_GAP and self.picker is not None:
            actions += self._thaw(now - self._last)
        self._last = now
        due = self.link.due(now)
        if due is Due.LOST:
            return actions + self._root_lost(now)
        if due is Due.PROBE:
            actions.append(ProbeRoot(self.root))
        if self.book.may_ask(now):
            actions += self._ask_hashes()
        if self.phase is Phase.SWARMING:
            assert self.picker is not None
            actions += self._translate(self.picker.on_timer(now))
            actions += self._pump(now)
        elif self.phase is Phase.FINISHING and self.book.verdict_due(now):
            actions.append(RequestVerdict(self.root))
        elif self.phase is Phase.LINGERING and now >= self._linger_until:
            self._move(Phase.DONE)
            actions.append(Finish(whole=False, verify=False))
        return actions

    # events: the root ------------------------------------------------------------------

    def on_joined(self, root: PeerId, view: BlobView, now: float) -> list[Action]:
        self._last = now
        if self.phase is not Phase.JOINING or root != self.link.joining:
            return []
        if view.failure is BlobFailure.ORIGIN_UNAVAILABLE:
            return self._to_origin(f"root {root}: {view.reason or 'cannot fetch it'}")
        if view.failure is not None:
            return self._fail(view.failure, f"root {root}: {view.reason}")
        actions: list[Action] = []
        if self.picker is None:
            if view.size <= 0 or view.piece_size <= 0:
                return self._fail(BlobFailure.UNKNOWN_BLOB, f"root {root}: no geometry")
            self.size, self.piece_size = view.size, view.piece_size
            count = piece_count(view.size, view.piece_size)
            self.picker = PiecePicker(
                self.peer,
                self.blob,
                count,
                self.picker_policy,
                have=self._have & full_mask(count),
                seed=self._seed,
            )
            if self._wanted != -1:
                self.picker.set_wanted(self._wanted)
            self.book.open(count)
            actions.append(OpenBlob(view.size, view.piece_size))
        elif (view.size, view.piece_size) != (self.size, self.piece_size):
            return self._fail(BlobFailure.UNKNOWN_BLOB, f"root {root}: another geometry")
        self.link.joined(root)
        self._parents_ask = self.book.verdict_out = self.book.asking = False
        actions += self._take(view, now)
        if self.ended:
            return actions
        self._move(Phase.SWARMING)
        actions += self._translate(self.picker.on_parents(view.parents, now))
        return actions + self._pump(now)

    def on_parents(self, offers: Sequence[ParentOffer], now: float) -> list[Action]:
        """A parent set the root pushed (this agent's place in a tree changed)."""
        self._last = now
        if self.phase is not Phase.SWARMING or self.picker is None:
            return []
        return self._translate(self.picker.on_parents(offers, now)) + self._pump(now)

    def on_parents_answer(self, view: BlobView, now: float) -> list[Action]:
        self._last = now
        self._parents_ask = False
        if view.failure is BlobFailure.NOT_JOINED:
            return self._rejoin()
        actions = self._take(view, now)
        if self.ended:
            return actions
        return actions + self.on_parents(view.parents, now)

    def on_hashes(self, view: BlobView, now: float) -> list[Action]:
        self._last = now
        self.book.asking = False
        return self._take(view, now)

    def on_verdict(self, view: BlobView, now: float) -> list[Action]:
        self._last = now
        actions = self._take(view, now)
        trust = self.book.verdict(now)
        if self.phase is not Phase.FINISHING or trust is None:
            return actions
        self._move(Phase.DONE)
        return [*actions, Finish(whole=True, verify=not trust)]

    def on_root_silent(self, root: PeerId, busy: bool, now: float) -> list[Action]:
        """A call to ``root`` failed: no answer in time (``busy``), or refused/failed."""
        self._last = now
        if self.phase is Phase.JOINING:
            if root != self.link.joining:
                return []
            if self.link.join_failed(busy):
                return [JoinRoot(root, self.have)]
            return self._join_next()
        if root != self.root:
            return []
        self._parents_ask = False
        if self.book.asking:
            self.book.failed(now)
        if self.phase is Phase.FINISHING:
            self._move(Phase.DONE)  # the pieces are here; the digest is checked locally
            return [Finish(whole=True, verify=True)]
        return [ProbeRoot(root)] if self.link.doubt(now) else []

    def on_probe_root(self, root: PeerId, alive: bool, refused: bool, now: float) -> list[Action]:
        self._last = now
        if root != self.root:
            return []
        if self.link.answered(alive, refused, now):
            return self._root_lost(now)
        return self._ask_hashes() if alive and self.book.waiting else []

    def on_forgotten(self, now: float) -> list[Action]:
        """The root does not know this agent in the blob's swarm any more (it dropped it
        as silent, or restarted): join it again with what is here."""
        self._last = now
        if self.phase in (Phase.SWARMING, Phase.LINGERING):
            return self._rejoin()
        return []

    # events: pieces --------------------------------------------------------------------

    def on_started(self, parent: PeerId, index: int, now: float) -> list[Action]:
        """The first bytes of ``index`` arrived from ``parent``: the root may now hand
        this agent out for it (announced earlier, two agents could wait on each other)."""
        self._last = now
        if self.picker is None:
            return []
        self.picker.on_started(parent, index, now)
        actions: list[Action] = [Fetching(self.peer, self.blob, (index,))]
        self.book.want(index)  # its chunk hashes, to check and pass it on as it comes
        return actions + self._ask_hashes() if self.book.may_ask(now) else actions

    def on_received(self, parent: PeerId, index: int, now: float) -> list[Action]:
        """All bytes of ``index`` from ``parent`` are here (not yet checked)."""
        self._last = now
        self.book.wanted.discard(index)
        h = self.book.known(index)
        if h is not None:
            return [Store(parent, index, h)]
        self.book.hold(index, parent)
        return self._ask_hashes() if self.book.may_ask(now) else []

    def on_stored(self, parent: PeerId, index: int, ok: bool, now: float) -> list[Action]:
        """``Store`` ended: the bytes matched the hash and are stored, or did not match."""
        self._last = now
        if self.picker is None:
            return []
        if ok and self.link.doubting:
            if self.picker.is_seed(parent):
                self.link.clear()  # the root sends pieces: it runs, only its calls are slow
            else:
                self.link.progressed(now)  # the swarm still runs: the loss waits
        actions: list[Action] = []
        was = (self.picker.have >> index) & 1
        actions += self._translate(self.picker.on_piece(parent, index, now, ok=ok))
        if ok and not was and (self.picker.have >> index) & 1:
            actions.append(Have(self.peer, self.blob, (index,)))
        elif not ok:
            actions += self._abandoned(index)
        return actions + self._pump(now)

    def on_fetch_failed(
        self, parent: PeerId, index: int, error: FetchError, now: float
    ) -> list[Action]:
        self._last = now
        self.book.wanted.discard(index)
        if self.picker is None:
            return []
        actions = self._translate(self.picker.on_failed(parent, index, now, REASON[error]))
        return actions + self._abandoned(index) + self._pump(now)

    def on_probe_peer(self, parent: PeerId, alive: bool, now: float) -> list[Action]:
        self._last = now
        if self.picker is None:
            return []
        return self._translate(self.picker.on_probe(parent, alive, now)) + self._pump(now)

    def on_origin_done(self, ok: bool, reason: str, now: float) -> list[Action]:
        self._last = now
        if self.phase is not Phase.ORIGIN:
            return []
        if not ok:
            return self._fail(BlobFailure.ORIGIN_UNAVAILABLE, reason)
        self._move(Phase.DONE)
        return [Finish(whole=self.whole, verify=True)]

    # internals -------------------------------------------------------------------------

    def _move(self, to: Phase) -> None:
        if to is not self.phase and to not in PHASES[self.phase]:
            raise AssertionError(f"download {self.blob}: {self.phase.value} -> {to.value}")
        self.phase = to

    def _join_next(self, *, first: bool = False) -> list[Action]:
        """The next root in rendezvous order that is not lost, else the origin."""
        root = self.link.next(first=first)
        if root is not None:
            self._move(Phase.JOINING)
            return [JoinRoot(root, self.have)]
        if first or self.picker is None:
            return self._to_origin("no root answered")
        return self._to_origin("every root is gone")

    def _rejoin(self) -> list[Action]:
        self._move(Phase.JOINING)
        return [JoinRoot(self.link.again(), self.have)]

    def _root_lost(self, now: float) -> list[Action]:
        """Rule 3: the next root takes the blob over; the requests out to parents go on
        (the hashes known are the blob's, whoever said them). With no root left, what
        is missing comes from the origin."""
        self.link.lose()
        if self.phase is Phase.FINISHING:
            self._move(Phase.DONE)
            return [Finish(whole=True, verify=True)]
        actions = self._join_next()
        if self.phase is Phase.ORIGIN and self.picker is not None:
            self.book.held.clear()
            self.book.wanted.clear()
            actions = self._translate(self.picker.abandon(), report=False) + actions
        return actions

    def _to_origin(self, why: str) -> list[Action]:
        self._move(Phase.ORIGIN)
        if self.picker is None:
            return [FetchOrigin(-1, why)]
        return [FetchOrigin(self.picker.wanted & ~self.picker.have, why)]

    def _fail(self, failure: BlobFailure, reason: str) -> list[Action]:
        self.failure, self.reason = failure, reason
        actions: list[Action] = []
        if self.picker is not None:
            actions += self._translate(self.picker.abandon(), report=False)
        self._move(Phase.FAILED)
        return [*actions, Fail(failure, reason)]

    def _thaw(self, gap: float) -> list[Action]:
        """Rule 5: time passed here only; move the clocks on and join the root again."""
        assert self.picker is not None
        self.picker.shift(gap)
        self.link.shift(gap)
        if self.phase is Phase.SWARMING and self.root:
            return self._rejoin()
        return []

    def _take(self, view: BlobView, now: float) -> list[Action]:
        """Hashes and verdicts from any answer; pieces that waited for a hash go on."""
        if self.ended:
            return []
        if view.failure is BlobFailure.DIGEST_MISMATCH:
            return self._fail(view.failure, view.reason)
        if not self.book.waiting:
            self.book.take(view, now)
            return []
        ready, again = self.book.take(view, now)
        actions: list[Action] = [Store(p, index, sha) for p, index, sha in ready]
        return actions + self._ask_hashes() if again else actions

    def _ask_hashes(self) -> list[Action]:
        if self.book.asking or not self.root:
            return []
        return [RequestHashes(self.root, self.book.ask(), self.policy.hash_wait)]

    def _abandoned(self, index: int) -> list[Action]:
        pk = self.picker
        assert pk is not None
        if not (pk.requested >> index) & 1 and not (pk.have >> index) & 1:
            return [Abandoned(self.peer, self.blob, (index,))]
        return []

    def _translate(self, actions: list[PickerAction], *, report: bool = True) -> list[Action]:
        """The picker's actions as the shell carries them out (rule 6)."""
        out: list[Action] = []
        for a in actions:
            t = type(a)
            if t is Cancel:
                out.append(a)
                if report:
                    assert isinstance(a, Cancel)
                    out += self._abandoned(a.index)
            elif t is NeedParents:
                if not self._parents_ask and self.root and self.phase is Phase.SWARMING:
                    self._parents_ask = True
                    out.append(RequestParents(self.root))
            elif t is ParentFailed:
                if report:
                    out.append(a)
            else:
                out.append(a)
        return out

    def _pump(self, now: float) -> list[Action]:
        """New requests for idle slots; the end of the download when it is satisfied."""
        pk = self.picker
        if pk is None or self.phase is not Phase.SWARMING:
            return []
        if pk.satisfied:
            if self.whole:
                self._move(Phase.FINISHING)
                if self.book.vouched:
                    self._move(Phase.DONE)
                    return [Finish(whole=True, verify=False)]
                self.book.verdict_out = True
                return [RequestVerdict(self.root)]
            self._move(Phase.LINGERING)
            self._linger_until = now + self.policy.linger
            return []
        if not pk.idle:
            return []
        return self._translate(pk.requests(now))
