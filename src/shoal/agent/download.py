"""The asyncio driver of one blob download: carries out what ``BlobDownload`` decides.

Every rule of a download (which root, when to doubt it, which piece from whom, when a
piece is trusted, when to go to the origin) is in the pure machine
``shoal.swarm.download``; the simulator drives the same class. This driver only turns
its actions into IO (control calls, peer reads, store writes, origin fetches), feeds
back what happened with the loop's time, and ticks the machine by its deadline. Every
task it starts is its own and is cancelled when the download ends.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import replace
from typing import Protocol

from shoal.agent.passon import PassOn, store_piece
from shoal.cache.blob import BlobInfo
from shoal.cache.errors import PieceCorruptError
from shoal.cache.store import PieceStore
from shoal.config import Config
from shoal.control import codec
from shoal.control.client import ControlClient, RootUnavailableError
from shoal.control.schema import ParentsRequest
from shoal.control.schema import Source as WireSource
from shoal.errors import DigestMismatchError, ShoalError, UpstreamUnavailableError
from shoal.observability import Metrics
from shoal.observability.collectors import PIECE_FETCH
from shoal.oci.digest import Digest
from shoal.peer.buffers import BufferPool
from shoal.peer.client import PeerClient
from shoal.peer.errors import PeerRequestError, PeerUnavailableError
from shoal.registry.origin_fetch import Source
from shoal.registry.range_fetch import fetch_pieces
from shoal.registry.upstream import UpstreamClient
from shoal.swarm import (
    Abandoned,
    Action,
    BlobDownload,
    BlobFailure,
    BlobView,
    Cancel,
    Fail,
    FetchError,
    Fetching,
    FetchOrigin,
    Finish,
    Have,
    Join,
    JoinRoot,
    OpenBlob,
    ParentFailed,
    ParentOffer,
    ProbePeer,
    ProbeRoot,
    Request,
    RequestHashes,
    RequestParents,
    RequestVerdict,
    RootMessage,
    Store,
    indices_of,
)
from shoal.wire import ErrorCode

log = logging.getLogger(__name__)

#: seconds between ticks at most, whatever the machine's deadline (a stopped process is
#: told by the gap between ticks; see ``swarm.download`` rule 5)
MAX_TICK = 0.25

#: the wire's error codes as the machine sees them
_FETCH_ERROR: dict[ErrorCode, FetchError] = {
    ErrorCode.NOT_FOUND: FetchError.NOT_FOUND,
    ErrorCode.PIECE_MISSING: FetchError.PIECE_MISSING,
    ErrorCode.BUSY: FetchError.BUSY,
    ErrorCode.BAD_REQUEST: FetchError.BAD_REQUEST,
    ErrorCode.INTERNAL: FetchError.INTERNAL,
    ErrorCode.PROTOCOL: FetchError.UNREACHABLE,
}


class BlobFailedError(DigestMismatchError):
    """The blob cannot be had through the swarm (the root failed it for everyone)."""


class DownloadHost(Protocol):
    """What a download needs of the agent's swarm (``swarm.SwarmProvider``)."""

    config: Config
    store: PieceStore
    peers: PeerClient
    control: ControlClient
    buffers: BufferPool
    metrics: Metrics
    peer_id: str

    @property
    def fallback_upstream(self) -> UpstreamClient: ...

    def roots_for(self, digest: str) -> list[str]: ...

    def saw_root(self, root: str) -> None: ...

    def report(self, root: str, msg: RootMessage) -> None: ...

    async def flush(self, root: str) -> None: ...

    async def fetch_from_origin(self, digest: Digest, source: Source, why: str) -> BlobInfo: ...

    async def fetch_missing(self, fetch: Callable[[], Awaitable[int]]) -> int: ...


class DownloadDriver:
    """One blob, from join to sealed (or failed), as ``machine`` decides."""

    def __init__(
        self, provider: DownloadHost, digest: Digest, source: Source, *, wanted: int
    ) -> None:
        self.p = provider
        self.digest = digest
        self.key = str(digest)
        self.source = source
        cfg = provider.config
        info = provider.store.lookup(self.key)
        have = 0 if info is None else sum(1 << i for i in range(info.piece_count) if info.has(i))
        self.machine = BlobDownload(
            provider.peer_id,
            self.key,
            provider.roots_for(self.key),
            policy=cfg.swarm.download,
            picker=cfg.swarm.picker,
            root_timeout=cfg.p2p.root_timeout,
            have=have,
            wanted=wanted,
        )
        loop = asyncio.get_running_loop()
        self.geometry: asyncio.Future[BlobInfo] = loop.create_future()
        self.task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._fetches: dict[tuple[str, int], asyncio.Task[None]] = {}
        #: pieces fetched, not yet stored: the bytes and the fetch's pass-on (which
        #: owns the buffer and gives it back once)
        self._received: dict[tuple[str, int], tuple[memoryview, PassOn]] = {}
        #: fetches still receiving, by (parent, piece): told of chunk hashes as they come
        self._passing: dict[tuple[str, int], PassOn] = {}
        self._news = 0  # the hash book's answers seen by ``_event``
        self._asked: dict[tuple[str, int], float] = {}  # for the piece fetch histogram
        self._seed = ""  # the root's peer id (piece source "root" in the metrics)
        self._helpers: set[asyncio.Task[None]] = set()
        self._final: set[asyncio.Task[None]] = set()
        self._sealed = False  # the origin fetcher sealed the blob itself
        self._error: ShoalError | None = None

    def __repr__(self) -> str:
        return f"<DownloadDriver {self.machine!r} [{len(self._fetches)} reads]>"

    # --- the loop ------------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        timer: asyncio.TimerHandle | None = None
        due: float | None = None  # when the timer rings; None once it has

        def ring() -> None:
            nonlocal due
            due = None
            self._wake.set()

        try:
            self._apply(self.machine.start(loop.time()))
            while not self.machine.ended:
                now = loop.time()
                # the machine's time-driven work (stalls, silences, asks) is due only
                # at its deadline: events carry out their own (the simulator's contract)
                if due is None:
                    self._apply(self.machine.tick(now))
                deadline = self.machine.next_deadline()
                wait = MAX_TICK if deadline is None else min(max(deadline - now, 0.002), MAX_TICK)
                # most wake-ups are events: the timer stays unless it would ring late, or
                # more than 50 ms early (an early ring costs one more tick, nothing else)
                target = now + wait
                if due is None or not target - 0.05 <= due <= target + 0.001:
                    if timer is not None:
                        timer.cancel()
                    due = target
                    timer = loop.call_at(due, ring)
                await self._wake.wait()
                self._wake.clear()
            while self._final:  # the seal, the final flush
                await asyncio.gather(*list(self._final), return_exceptions=True)
        finally:
            if timer is not None:
                timer.cancel()
            tasks = [*self._fetches.values(), *self._helpers, *self._final]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._let_go_all()
            if not self.geometry.done():
                self._fail_waiters(self._error or UpstreamUnavailableError(f"{self.key}: ended"))

    def want(self, mask: int) -> None:
        self._apply(self.machine.want(mask, asyncio.get_running_loop().time()))
        self._wake.set()

    def on_parents(self, offers: tuple[ParentOffer, ...]) -> None:
        self._apply(self.machine.on_parents(offers, asyncio.get_running_loop().time()))
        self._wake.set()

    def on_forgotten(self) -> None:
        self._apply(self.machine.on_forgotten(asyncio.get_running_loop().time()))
        self._wake.set()

    # --- carrying out the machine's actions -------------------------------------------

    def _event(self, actions: list[Action]) -> None:
        self._apply(actions)
        book = self.machine.book
        if book.news != self._news:  # chunk hashes for pieces arriving now, perhaps
            self._news = book.news
            for po in self._passing.values():
                po.know(book.chunks_of(po.index))
        self._wake.set()

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def _apply(self, actions: list[Action]) -> None:
        m = self.machine
        for a in actions:
            if isinstance(a, Request):
                key = (a.parent, a.index)
                if key not in self._fetches:
                    self._fetches[key] = asyncio.create_task(self._fetch(a.parent, a.index))
            elif isinstance(a, Cancel):
                key = (a.parent, a.index)
                task = self._fetches.pop(key, None)
                if task is not None and not task.done():
                    # its buffer goes back when the task ends, not now: until the read
                    # is unwound the connection may still be filling it
                    task.cancel()
                received = self._received.pop(key, None)
                self._asked.pop(key, None)
                if received is not None:
                    received[1].abandon()
            elif isinstance(a, Have | Fetching | Abandoned | ParentFailed):
                self.p.report(m.root, a)
            elif isinstance(a, Store):
                self._spawn(self._store(a))
            elif isinstance(a, ProbePeer):
                self._spawn(self._probe_peer(a.parent))
            elif isinstance(a, JoinRoot):
                self._spawn(self._join(a))
            elif isinstance(a, RequestHashes):
                self._spawn(self._ask(a.root, "hashes", a.known, a.wait))
            elif isinstance(a, RequestVerdict):
                self._spawn(self._ask(a.root, "verdict", len(m.hashes), 0.0))
            elif isinstance(a, RequestParents):
                self._spawn(self._ask_parents(a.root))
            elif isinstance(a, ProbeRoot):
                self._spawn(self._probe_root(a.root))
            elif isinstance(a, OpenBlob):
                self._spawn(self._open(a))
            elif isinstance(a, FetchOrigin):
                self._spawn(self._origin(a))
            elif isinstance(a, Finish):
                self._spawn(self._finish(a), final=True)
            elif isinstance(a, Fail):
                self._error = BlobFailedError(f"{self.key}: {a.reason or a.failure.value}")
                log.error("download of %s failed: %s", self.key, a.reason or a.failure.value)
                self._fail_waiters(self._error)
                self._spawn(self._drop_partial(), final=True)

    def _spawn(self, coro: Coroutine[object, object, None], *, final: bool = False) -> None:
        """A task of this download; ``final`` ones (the seal, the last flush) are awaited
        when the machine has ended, the others cancelled."""
        task = asyncio.create_task(coro)
        helpers = self._final if final else self._helpers
        helpers.add(task)
        task.add_done_callback(helpers.discard)

    # --- the root -------------------------------------------------------------------

    async def _join(self, a: JoinRoot) -> None:
        cfg = self.p.config.p2p
        src = WireSource(self.source.host, self.source.name, self.source.authorization)
        join = Join(self.p.peer_id, self.key, cfg.zone, a.have)
        try:
            state = await self.p.control.join(a.root, codec.join_wire(join, src))
            view = codec.view(state)
        except RootUnavailableError as exc:
            log.warning("root %s for %s: %s", a.root, self.key, exc.message)
            self._event(self.machine.on_root_silent(a.root, exc.busy, self._now()))
            return
        except codec.CodecError as exc:
            log.warning("root %s for %s: %s", a.root, self.key, exc)
            self._event(self.machine.on_root_silent(a.root, False, self._now()))
            return
        self.p.saw_root(a.root)
        self._seed = view.seed or self._seed
        self._event(self.machine.on_joined(a.root, view, self._now()))

    async def _call(
        self, root: str, call: Callable[[], Coroutine[object, object, BlobView]]
    ) -> BlobView | None:
        try:
            return await call()
        except RootUnavailableError as exc:
            self._event(self.machine.on_root_silent(root, exc.busy, self._now()))
        except codec.CodecError as exc:
            log.warning("root %s for %s: %s", root, self.key, exc)
            self._event(self.machine.on_root_silent(root, False, self._now()))
        return None

    async def _ask(self, root: str, what: str, known: int, wait: float) -> None:
        async def call() -> BlobView:
            view = codec.view(await self.p.control.blob(root, self.key, known, wait=wait))
            # from an older root no chunk hashes: those pieces are checked whole
            return view if view.chunks else replace(view, chunks=(b"",) * len(view.hashes))

        view = await self._call(root, call)
        if view is None:
            return
        if what == "hashes":
            self._event(self.machine.on_hashes(view, self._now()))
        else:
            self._event(self.machine.on_verdict(view, self._now()))

    async def _ask_parents(self, root: str) -> None:
        known = next((i for i, h in enumerate(self.machine.hashes) if h is None), 0)

        async def call() -> BlobView:
            req = ParentsRequest(self.p.peer_id, self.key, known=known)
            return codec.view(await self.p.control.parents(root, req))

        view = await self._call(root, call)
        if view is not None:
            self._event(self.machine.on_parents_answer(view, self._now()))

    async def _probe_root(self, root: str) -> None:
        try:
            await self.p.control.health(root)
            alive, refused = True, False
        except RootUnavailableError as exc:
            alive, refused = False, not exc.busy
        self._event(self.machine.on_probe_root(root, alive, refused, self._now()))

    # --- pieces -----------------------------------------------------------------------

    async def _open(self, a: OpenBlob) -> None:
        try:
            info = await self.p.store.create(self.key, a.size, piece_size=a.piece_size)
        except ShoalError as exc:
            self._error = exc
            self._fail_waiters(exc)
            return
        if not self.geometry.done():
            self.geometry.set_result(info)

    async def _fetch(self, parent: str, index: int) -> None:
        loop = asyncio.get_running_loop()
        try:
            info = await asyncio.shield(self.geometry)
        except Exception:
            self._fetches.pop((parent, index), None)
            return
        asked = first = loop.time()
        po = PassOn(self.p.store, self.p.buffers, self.key, index, parent)
        key = (parent, index)
        self._passing[key] = po

        def started() -> None:
            nonlocal first
            first = loop.time()
            po.know(self.machine.book.chunks_of(index))
            self._event(self.machine.on_started(parent, index, first))

        error: FetchError | None = None
        try:
            data = await self.p.peers.read(
                parent,
                self.key,
                index * info.piece_size,
                info.piece_length(index),
                pool=self.p.buffers,
                on_start=started,
                check=po.check,
            )
        except asyncio.CancelledError:
            po.abandon()
            raise
        except PeerRequestError as exc:
            error = _FETCH_ERROR.get(exc.code, FetchError.UNREACHABLE)
            log.debug("piece %d of %s from %s: %s", index, self.key, parent, exc.message)
        except (PeerUnavailableError, ShoalError, OSError) as exc:
            error = FetchError.UNREACHABLE
            log.debug("piece %d of %s from %s: %s", index, self.key, parent, exc)
        finally:
            if self._fetches.get(key) is asyncio.current_task():
                del self._fetches[key]
            if self._passing.get(key) is po:  # a later fetch of the same may be there
                del self._passing[key]
        if error is not None:
            po.abandon()
            self._event(self.machine.on_fetch_failed(parent, index, error, loop.time()))
            return
        log.debug("piece %d of %s from %s: waited %.3f s, took %.3f s", index, self.key[7:19],
                  parent, first - asked, loop.time() - first)  # fmt: skip
        self._received[key] = (data, po)
        self._asked[key] = asked
        self._event(self.machine.on_received(parent, index, loop.time()))

    async def _store(self, a: Store) -> None:
        received = self._received.pop((a.parent, a.index), None)
        asked = self._asked.pop((a.parent, a.index), None)
        if received is None:
            return  # cancelled meanwhile
        data, po = received
        try:
            await store_piece(self.p.store, self.key, a.index, data, a.sha256, po, self._releaser)
            ok = True
        except PieceCorruptError:
            log.warning("parent %s sent a bad piece %d of %s: banned", a.parent, a.index, self.key)
            ok = False
        except ShoalError as exc:  # the blob went from the store (evicted, failed)
            log.warning("piece %d of %s not stored: %s", a.index, self.key, exc.message)
            self._event(
                self.machine.on_fetch_failed(a.parent, a.index, FetchError.INTERNAL, self._now())
            )
            return
        now = self._now()
        if ok and asked is not None:
            source = "root" if a.parent == self._seed else "peer"
            self.p.metrics.observe(PIECE_FETCH, now - asked, source=source)
        self._event(self.machine.on_stored(a.parent, a.index, ok, now))

    async def _probe_peer(self, parent: str) -> None:
        alive = await self.p.peers.ping(parent, self.p.config.swarm.download.ping_timeout)
        if not alive:
            log.warning("parent %s of %s does not answer a ping: dropped", parent, self.key)
        self._event(self.machine.on_probe_peer(parent, alive, self._now()))

    def _let_go_all(self) -> None:
        """The download ended (its fetch tasks too): the buffers of pieces received but
        not stored (their store tasks cancelled) go back, each once."""
        received, self._received = self._received, {}
        for _, po in received.values():
            po.abandon()

    def _releaser(self, data: memoryview) -> Callable[[], None] | None:
        buffer = data.obj
        if not isinstance(buffer, bytearray):
            return None
        return functools.partial(self.p.buffers.give, buffer)

    # --- the end --------------------------------------------------------------------

    async def _origin(self, a: FetchOrigin) -> None:
        try:
            if a.pieces == -1 or not self.geometry.done():
                info = await self.p.fetch_from_origin(self.digest, self.source, a.why)
                self._sealed = info.complete
                if not self.geometry.done():
                    self.geometry.set_result(info)
            else:
                missing = list(indices_of(a.pieces))
                log.warning(
                    "fetching %d missing pieces of %s from the origin %s myself: %s",
                    len(missing), self.key, self.source.host, a.why,
                )  # fmt: skip
                await self.p.fetch_missing(
                    lambda: fetch_pieces(
                        self.p.fallback_upstream,
                        self.p.store,
                        self.digest,
                        self.source,
                        missing,
                        self.machine.hashes,
                    )
                )
        except ShoalError as exc:
            self._error = exc
            self._fail_waiters(exc)
            self._event(self.machine.on_origin_done(False, exc.message, self._now()))
            return
        self._event(self.machine.on_origin_done(True, "", self._now()))

    async def _finish(self, a: Finish) -> None:
        if a.whole and not self._sealed:
            try:
                await self.p.store.finish(self.key, verify=a.verify)
            except ShoalError as exc:
                self._error = exc
                log.error("download of %s failed at the end: %s", self.key, exc.message)
                self._fail_waiters(exc)
        await self.p.flush(self.machine.root)

    def _fail_waiters(self, exc: ShoalError) -> None:
        if not self.geometry.done():
            self.geometry.set_exception(exc)
            self.geometry.exception()

    async def _drop_partial(self) -> None:
        info = self.p.store.lookup(self.key)
        if info is not None and not info.complete and self.machine.whole:
            await self.p.store.remove(self.key)

    # --- for the provider ---------------------------------------------------------------

    @property
    def failed(self) -> BlobFailure | None:
        return self.machine.failure
