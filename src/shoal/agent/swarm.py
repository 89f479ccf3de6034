"""The agent joins blob swarms: pieces from parents the root assigns, verified, stored.

``SwarmProvider.ensure`` is what the mirror calls for a blob it does not hold. It joins
the blob's swarm at its root (rendezvous hashing over the root list, the next root if
one does not answer) and runs a ``Download``: the swarm's ``PiecePicker`` decides which
piece to ask of which parent; this shell carries the decisions out over the peer
protocol, checks every piece against the root's hash before it is stored (and so before
it is served to anyone), and reports progress to the root in batches. A parent that
fails, stalls or sends a bad piece is reported and its piece asked elsewhere.

When no root answers, or the root goes away mid-blob and no parent can supply what is
left, the agent fetches from the origin itself, at most ``P2PConfig.fallbackLimit``
blobs at a time, and says so in its log and in ``shoal_origin_fallback_total``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine

from shoal.cache.blob import BlobInfo
from shoal.cache.errors import PieceCorruptError
from shoal.cache.store import PieceStore
from shoal.config import Config
from shoal.control.client import ControlClient, RootUnavailableError
from shoal.control.placement import rank_roots
from shoal.control.schema import (
    AbandonedReport,
    AnyReport,
    BlobState,
    FailedReport,
    FetchingReport,
    HaveReport,
    HoldRequest,
    JoinRequest,
    LoadReport,
    ParentsRequest,
    UpdateRequest,
)
from shoal.control.schema import Source as WireSource
from shoal.errors import DigestMismatchError, ShoalError
from shoal.observability import Metrics
from shoal.oci.digest import Digest
from shoal.oci.range import ByteRange
from shoal.peer.buffers import BufferPool
from shoal.peer.client import PeerClient
from shoal.registry.origin_fetch import Source
from shoal.registry.provider import OriginProvider
from shoal.swarm import (
    Cancel,
    FailReason,
    NeedParents,
    ParentFailed,
    ParentOffer,
    PickerAction,
    PiecePicker,
    Request,
    mask_of,
)

log = logging.getLogger(__name__)

FALLBACK_METRIC = "shoal_origin_fallback_total"
FALLBACK_HELP = "Blobs this agent fetched from the origin itself because no root could serve"
#: seconds between report batches to a root (one batch for every blob it schedules here)
REPORT_INTERVAL = 0.05
#: seconds between asks for parent sets the root pushed, when there is nothing to report
PUSH_POLL = 0.5
#: joins sent to a root that does not answer in time before the next root (or the origin)
JOIN_TRIES = 3
#: seconds the root may hold an ask for piece hashes it has not computed yet
HASH_WAIT = 2.0
#: seconds before asking again when an answer brought no new hash
HASH_PAUSE = 0.05


#: blobs of one manifest joined ahead of the runtime's requests, at most
MAX_PREFETCH = 128


def _quiet(fut: asyncio.Future[BlobInfo]) -> None:
    """A prefetch nobody awaited may fail; its error is logged by the download."""
    if not fut.cancelled():
        fut.exception()


class BlobFailedError(DigestMismatchError):
    """The root failed the blob for everyone (its origin content did not match)."""


class SwarmProvider:
    def __init__(
        self,
        config: Config,
        store: PieceStore,
        peers: PeerClient,
        control: ControlClient,
        fallback: OriginProvider,
        metrics: Metrics,
    ) -> None:
        self.config = config
        self.store = store
        self.peers = peers
        self.control = control
        self.fallback = fallback
        self.metrics = metrics
        self.peer_id = ""
        self._downloads: dict[str, Download] = {}
        self._ranges: set[asyncio.Task[None]] = set()
        self._fallback_limit = asyncio.Semaphore(max(config.p2p.fallback_limit, 1))
        self._roots_seen: set[str] = set()
        self._heartbeat: asyncio.Task[None] | None = None
        self._reporter: asyncio.Task[None] | None = None
        #: reports waiting for the next batch, by root
        self._outbox: dict[str, list[AnyReport]] = {}
        self.buffers = BufferPool()
        #: told of each heartbeat call to a root: (root, "") if it answered, else why not
        self.root_seen: Callable[[str, str], None] = lambda root, why: None

    def __repr__(self) -> str:
        return f"<SwarmProvider {self.peer_id} [{len(self._downloads)} downloading]>"

    def start(self, peer_id: str) -> None:
        self.peer_id = peer_id
        self._heartbeat = asyncio.create_task(self._beat())
        self._reporter = asyncio.create_task(self._report_loop())

    async def close(self) -> None:
        tasks = [d.task for d in self._downloads.values() if d.task is not None]
        tasks += self._ranges
        for helper in (self._heartbeat, self._reporter):
            if helper is not None:
                tasks.append(helper)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def ensure(self, digest: Digest, source: Source) -> BlobInfo:
        info = self.store.lookup(str(digest))
        if info is not None and info.complete:
            return info
        return await asyncio.shield(self._download(digest, source).geometry)

    def _download(self, digest: Digest, source: Source) -> Download:
        key = str(digest)
        download = self._downloads.get(key)
        if download is None:
            download = Download(self, digest, source)
            self._downloads[key] = download
            download.task = asyncio.create_task(download.run())
            download.task.add_done_callback(lambda _: self._downloads.pop(key, None))
        return download

    def prefetch(self, blobs: list[tuple[Digest, int]], source: Source) -> int:
        """Join the swarms of a manifest's blobs now, not when the runtime asks for each
        (containerd asks 3 at a time, skopeo asks for the config last): they flow in
        parallel and what the runtime reads has landed. Only what is not here, not on
        its way, and fits in half the store; a prefetch that fails costs nothing (the
        runtime's own request starts the blob again)."""
        if not self.config.p2p.prefetch:
            return 0
        room = self.store.capacity // 2
        started = 0
        for digest, size in blobs[:MAX_PREFETCH]:
            key = str(digest)
            if key in self._downloads or self.store.lookup(key) is not None:
                continue
            room -= size
            if room < 0:
                break
            download = self._download(digest, source)
            download.geometry.add_done_callback(_quiet)
            started += 1
        return started

    async def ensure_range(self, digest: Digest, source: Source, byte_range: ByteRange) -> BlobInfo:
        """Only the pieces ``byte_range`` needs (on-demand loading), unless the whole blob
        is here or already on its way."""
        from shoal.agent.ondemand import RangeFetch

        key = str(digest)
        info = self.store.lookup(key)
        if info is not None and info.complete:
            return info
        running = self._downloads.get(key)
        if running is not None:
            return await asyncio.shield(running.geometry)
        fetch = RangeFetch(self, digest, source, byte_range)
        fetch.task = asyncio.create_task(fetch.run())
        self._ranges.add(fetch.task)
        fetch.task.add_done_callback(self._ranges.discard)
        return await asyncio.shield(fetch.geometry)

    async def fetch_from_origin(self, digest: Digest, source: Source, why: str) -> BlobInfo:
        async with self._fallback_limit:
            log.warning("fetching %s from the origin %s myself: %s", digest, source.host, why)
            self.metrics.inc(FALLBACK_METRIC, FALLBACK_HELP)
            info, flight = await self.fallback.fetcher.start(digest, source)
            if flight is not None:
                await flight.wait()
            done = self.store.lookup(str(digest))
            return done or info

    def deliver(self, blob: str, offers: list[ParentOffer]) -> None:
        download = self._downloads.get(blob)
        if download is not None:
            download.on_parents(offers)

    def roots_for(self, digest: str) -> list[str]:
        return rank_roots(digest, self.config.p2p.roots)

    def saw_root(self, root: str) -> None:
        self._roots_seen.add(root)

    # --- reports: one batch per root every REPORT_INTERVAL, for all its blobs -----------

    def report(self, root: str, report: AnyReport) -> None:
        self._outbox.setdefault(root, []).append(report)

    async def _report_loop(self) -> None:
        """Every 50 ms, each root with news gets one batch for every blob it schedules
        here (a request per download would be one per layer: 4-40x the calls); at least
        every ``PUSH_POLL`` s it is asked for parent sets it pushed."""
        loop = asyncio.get_running_loop()
        last: dict[str, float] = {}
        while True:
            await asyncio.sleep(REPORT_INTERVAL)
            now = loop.time()
            live = {d.root for d in self._downloads.values() if d.root and not d.root_lost}
            lost = {d.root for d in self._downloads.values() if d.root_lost}
            for root in lost & set(self._outbox):
                del self._outbox[root]  # the downloads went to the origin instead
            polls = {r for r in live if now - last.get(r, 0.0) >= PUSH_POLL}
            due = sorted(polls | {r for r, batch in self._outbox.items() if batch})
            for root in due:
                last[root] = now
            await asyncio.gather(*(self.flush(root) for root in due))

    async def flush(self, root: str) -> None:
        """Send ``root`` what is waiting for it now; deliver the parent sets it pushed."""
        reports = self._outbox.pop(root, [])
        try:
            answer = await self.control.update(root, UpdateRequest(self.peer_id, reports))
        except RootUnavailableError:
            for download in list(self._downloads.values()):
                if download.root == root:
                    download.doubt_root()
            return
        for pushed in answer.assignments:
            self.deliver(pushed.blob, [o.offer() for o in pushed.parents])

    async def _beat(self) -> None:
        """Every 2 s: a load report to the roots (liveness), and to a root that restarted
        (a new incarnation, its soft state gone) the list of whole blobs held here."""
        incarnations: dict[str, str] = {}
        while True:
            await asyncio.sleep(2.0)
            for root in self.config.p2p.roots:
                try:
                    health = await self.control.health(root)
                    self.root_seen(root, "")
                    if incarnations.get(root) != health.incarnation:
                        held = self._held_for(root)
                        if held:
                            await self.control.hold(root, HoldRequest(self.peer_id, held))
                    incarnations[root] = health.incarnation
                    if root in self._roots_seen:
                        answer = await self.control.update(
                            root, UpdateRequest(self.peer_id, [LoadReport(0, 0.0)])
                        )
                        for pushed in answer.assignments:
                            self.deliver(pushed.blob, [o.offer() for o in pushed.parents])
                except RootUnavailableError as exc:
                    incarnations.pop(root, None)
                    self.root_seen(root, exc.message)

    def _held_for(self, root: str) -> list[str]:
        held = []
        for digest in self.store.digests():
            info = self.store.lookup(digest)
            if info is not None and info.complete and self.roots_for(digest)[0] == root:
                held.append(digest)
        return held


class Download:
    """One blob being fetched from the swarm into the store."""

    def __init__(self, provider: SwarmProvider, digest: Digest, source: Source) -> None:
        self.p = provider
        self.digest = digest
        self.key = str(digest)
        self.source = source
        self.geometry: asyncio.Future[BlobInfo] = asyncio.get_running_loop().create_future()
        self.task: asyncio.Task[None] | None = None
        self.root = ""
        self.hashes: list[bytes | None] = []
        self.picker: PiecePicker | None = None
        self._fetches: dict[tuple[str, int], asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._hash_event = asyncio.Event()
        self._refreshing = False
        self._helpers: set[asyncio.Task[None]] = set()
        self.failed: str = ""
        self.root_lost = False
        self._root_doubt: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<Download {self.key[:19]} root={self.root} {self.picker!r}>"

    # --- the whole life of a download ------------------------------------------------

    async def run(self) -> None:
        try:
            await self._run()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not self.geometry.done():
                self.geometry.set_exception(exc)
                self.geometry.exception()
            if self.store_has_blob():
                await self.p.store.remove(self.key)
            log.error("download of %s failed: %s", self.key, exc)
        finally:
            for task in [*self._fetches.values(), *self._helpers]:
                task.cancel()
            await asyncio.gather(*self._fetches.values(), *self._helpers, return_exceptions=True)

    def store_has_blob(self) -> bool:
        info = self.p.store.lookup(self.key)
        return info is not None and not info.complete

    async def _run(self) -> None:
        state = await self._join()
        if state is None:
            await self._without_root()
            return
        info = await self._adopt(state)
        await self._fetch_pieces(state, info)

    async def _fetch_pieces(self, state: BlobState, info: BlobInfo) -> None:
        """Every piece, as the picker decides, until the blob is whole and trusted."""
        have = mask_of(i for i in range(info.piece_count) if info.has(i))
        self.picker = PiecePicker(self.p.peer_id, self.key, info.piece_count, have=have)
        loop = asyncio.get_running_loop()
        self._apply(self.picker.on_parents([o.offer() for o in state.parents], loop.time()))
        while not self.picker.done:
            if self.failed:
                raise BlobFailedError(f"{self.key}: {self.failed}")
            if self.root_lost:
                # pieces the root had not fetched yet are nowhere in the swarm: stop
                # waiting on parents and take what is missing from the origin
                for task in list(self._fetches.values()):
                    task.cancel()
                await self.p.fetch_from_origin(
                    self.digest, self.source, f"root {self.root} went away mid-blob"
                )
                return
            now = loop.time()
            self._apply(self.picker.on_timer(now))
            self._apply(self.picker.requests(now))
            deadline = self.picker.next_deadline()
            wait = 0.25 if deadline is None else min(max(deadline - now, 0.002), 0.25)
            try:
                async with asyncio.timeout(wait):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
        await self._finish()

    async def _without_root(self) -> None:
        info = await self.p.fetch_from_origin(self.digest, self.source, "no root answered")
        self._set_geometry(info)

    async def _adopt(self, state: BlobState) -> BlobInfo:
        """The root's geometry and hashes into the store and this download."""
        info = await self.p.store.create(self.key, state.size, piece_size=state.piece_size)
        self.hashes = [None] * info.piece_count
        self._take_hashes(state)
        self._set_geometry(info)
        return info

    async def _finish(self) -> None:
        """Trust the piece hashes only once the root has checked the whole digest."""
        verify = True
        for _ in range(100):
            try:
                state = await self.p.control.blob(self.root, self.key, len(self.hashes))
            except RootUnavailableError:
                break
            if state.failed:
                raise BlobFailedError(f"{self.key}: {state.failed}")
            if state.complete:
                verify = False
                break
            await asyncio.sleep(0.05)
        await self.p.store.finish(self.key, verify=verify)
        await self.p.flush(self.root)

    def _set_geometry(self, info: BlobInfo) -> None:
        if not self.geometry.done():
            self.geometry.set_result(info)

    # --- the root ----------------------------------------------------------------------

    async def _join(self) -> BlobState | None:
        cfg = self.p.config.p2p
        info = self.p.store.lookup(self.key)
        have = 0 if info is None else mask_of(i for i in range(info.piece_count) if info.has(i))
        req = JoinRequest(
            peer=self.p.peer_id,
            blob=self.key,
            source=WireSource(self.source.host, self.source.name, self.source.authorization),
            zone=cfg.zone,
            have=format(have, "x"),
        )
        for root in self.p.roots_for(self.key):
            try:
                state = await self._join_one(root, req)
            except RootUnavailableError as exc:
                log.warning("root %s for %s: %s", root, self.key, exc.message)
                continue
            if state.failed:
                if "origin fetch failed" in state.failed:
                    return None  # the root could not reach the origin: try it ourselves
                raise BlobFailedError(f"{self.key}: {state.failed}")
            self.root = root
            self.p.saw_root(root)
            return state
        return None

    async def _join_one(self, root: str, req: JoinRequest) -> BlobState:
        """A root that times out is asked again (``JOIN_TRIES`` in all): every agent
        joins every layer at the same instant, and a loaded root answering late is far
        cheaper than each agent reading the blob from the origin. One that refuses the
        connection or fails is given up on at once."""
        for attempt in range(1, JOIN_TRIES + 1):
            try:
                return await self.p.control.join(root, req)
            except RootUnavailableError as exc:
                if not exc.busy or attempt == JOIN_TRIES:
                    raise
                log.info("root %s slow to answer the join of %s: asking again", root, self.key)
        raise AssertionError("unreachable")  # pragma: no cover

    def report(self, report: AnyReport) -> None:
        if self.root and not self.root_lost:
            self.p.report(self.root, report)

    def doubt_root(self) -> None:
        """A call to the root failed: it is lost only if it stays silent for a while.

        A busy root (hundreds of agents, a 2-core machine) answers late now and then;
        treating one late answer as a dead root would send every agent to the origin.
        """
        if self._root_doubt is None and not self.root_lost:
            self._root_doubt = asyncio.create_task(self._confirm_root())
            self._helpers.add(self._root_doubt)

    async def _confirm_root(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.p.config.p2p.root_timeout
        try:
            while loop.time() < deadline:
                try:
                    await self.p.control.health(self.root)
                    return  # it answers: carry on
                except RootUnavailableError:
                    await asyncio.sleep(0.2)
            log.warning("root %s silent for %.0f s", self.root, self.p.config.p2p.root_timeout)
            self.root_lost = True
            self._wake.set()
        finally:
            if self._root_doubt is not None:
                self._helpers.discard(self._root_doubt)
            self._root_doubt = None

    def _take_hashes(self, state: BlobState) -> None:
        for offset, text in enumerate(state.hashes):
            index = state.hashes_from + offset
            if 0 <= index < len(self.hashes) and self.hashes[index] is None:
                self.hashes[index] = bytes.fromhex(text)
        if state.failed:
            self.failed = state.failed
        self._hash_event.set()

    def _known(self) -> int:
        for i, h in enumerate(self.hashes):
            if h is None:
                return i
        return len(self.hashes)

    async def _hash(self, index: int) -> bytes:
        while True:
            h = self.hashes[index]
            if h is not None:
                return h
            if self.failed:
                raise BlobFailedError(f"{self.key}: {self.failed}")
            self._hash_event.clear()
            if not self._refreshing:
                self._spawn(self._refresh_hashes())
            await self._hash_event.wait()

    async def _refresh_hashes(self) -> None:
        """Ask the root for hashes it computed since; it answers when there are new ones
        (or after ``HASH_WAIT``), so waiting is not polling."""
        self._refreshing = True
        try:
            known = self._known()
            state = await self.p.control.blob(self.root, self.key, known, wait=HASH_WAIT)
            if not state.hashes:  # held to the limit, or a root that cannot wait: pace
                await asyncio.sleep(HASH_PAUSE)
            self._take_hashes(state)
        except RootUnavailableError:
            self.doubt_root()
            await asyncio.sleep(0.2)
            self._hash_event.set()
        finally:
            self._refreshing = False

    async def _ask_parents(self) -> None:
        assert self.picker is not None
        try:
            state = await self.p.control.parents(
                self.root, ParentsRequest(self.p.peer_id, self.key, known=self._known())
            )
        except RootUnavailableError:
            self.doubt_root()
            return
        self._take_hashes(state)
        now = asyncio.get_running_loop().time()
        self._apply(self.picker.on_parents([o.offer() for o in state.parents], now))
        self._wake.set()

    def on_parents(self, offers: list[ParentOffer]) -> None:
        """A parent set the root pushed (this agent's place in a stripe tree changed)."""
        if self.picker is None:
            return
        self._apply(self.picker.on_parents(offers, asyncio.get_running_loop().time()))
        self._wake.set()

    # --- acting on the picker's decisions ----------------------------------------------

    def _apply(self, actions: list[PickerAction]) -> None:
        for action in actions:
            if isinstance(action, Request):
                key = (action.parent, action.index)
                if key not in self._fetches:
                    self._fetches[key] = asyncio.create_task(
                        self._fetch(action.parent, action.index)
                    )
            elif isinstance(action, Cancel):
                task = self._fetches.pop((action.parent, action.index), None)
                if task is not None:
                    task.cancel()
                if not any(index == action.index for _, index in self._fetches):
                    # nobody here fetches it now: the root must not hand this agent out
                    # for it (children already queued get it once another copy lands)
                    self.report(AbandonedReport(self.key, [action.index]))
            elif isinstance(action, ParentFailed):
                self.report(
                    FailedReport(self.key, action.parent, action.reason.value, action.index)
                )
            elif isinstance(action, NeedParents) and not self.root_lost:
                self._spawn(self._ask_parents())

    async def fetch_piece(self, parent: str, index: int, info: BlobInfo) -> FailReason | None:
        """Piece ``index`` from ``parent``, checked against the root's hash, into the store.

        ``None`` on success, else why it failed (for the picker and the root).
        """
        try:
            picker = self.picker
            loop = asyncio.get_running_loop()
            asked = first = loop.time()

            def started() -> None:  # first bytes: a cut-through parent may have held it
                nonlocal first
                first = loop.time()
                if picker is not None:
                    picker.on_started(parent, index, loop.time())
                # only now may the root hand this agent out for the piece: announced at
                # request time, two agents could end up waiting on each other for it
                self.report(FetchingReport(self.key, [index]))

            # asked before its hash is known (pieces the root has not fetched yet are
            # queued for ahead); checked against it, on the disk thread, before stored;
            # the buffer comes from the pool when the bytes start, not while queued
            data = await self.p.peers.read(
                parent,
                self.key,
                index * info.piece_size,
                info.piece_length(index),
                pool=self.p.buffers,
                on_start=started,
            )
            expected = await self._hash(index)
            await self.p.store.write_piece(self.key, index, data, expect=expected)
            # not on cancellation: a worker thread may still be hashing or writing it
            if isinstance(data.obj, bytearray):
                self.p.buffers.give(data.obj)
            log.debug(
                "piece %d of %s from %s: waited %.3f s, took %.3f s",
                index, self.key[7:19], parent, first - asked, loop.time() - first,
            )  # fmt: skip
        except PieceCorruptError:
            log.warning("parent %s sent a bad piece %d of %s: banned", parent, index, self.key)
            return FailReason.BAD_PIECE
        except ShoalError as exc:
            log.debug("piece %d of %s from %s: %s", index, self.key, parent, exc)
            missing = "missing" in exc.message.lower()
            return FailReason.REFUSED if missing else FailReason.UNREACHABLE
        except (OSError, ConnectionError) as exc:
            log.debug("piece %d of %s from %s: %s", index, self.key, parent, exc)
            return FailReason.UNREACHABLE
        self.report(HaveReport(self.key, [index]))
        return None

    async def _fetch(self, parent: str, index: int) -> None:
        assert self.picker is not None
        info = self.p.store.lookup(self.key)
        try:
            reason = None if info is None else await self.fetch_piece(parent, index, info)
        finally:
            self._fetches.pop((parent, index), None)
        if info is None:
            return
        now = asyncio.get_running_loop().time()
        if reason is None:
            self._apply(self.picker.on_piece(parent, index, now))
        elif reason is FailReason.BAD_PIECE:
            self._apply(self.picker.on_piece(parent, index, now, ok=False))
        else:
            self._apply(self.picker.on_failed(parent, index, now, reason))
        if reason is not None:
            self.report(AbandonedReport(self.key, [index]))
        self._wake.set()

    def _spawn(self, coro: Coroutine[object, object, None]) -> None:
        task = asyncio.create_task(coro)
        self._helpers.add(task)
        task.add_done_callback(self._helpers.discard)
