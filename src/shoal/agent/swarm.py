"""The agent's swarm: the blob provider the mirror calls, and the agent's talk with roots.

``SwarmProvider.ensure`` is what the mirror calls for a blob it does not hold: it starts
(or finds) the blob's ``DownloadDriver``, which runs the pure download machine
(``shoal.swarm.download``: join the root in rendezvous order, pieces from the parents it
assigns, each checked against the root's hash before it is stored, the origin only for
what no root can give). ``ensure_range`` wants only the pieces a byte range covers (an
on-demand read): the same driver with a smaller wanted mask, not another class.

This module also owns what is per agent rather than per blob: the report outbox (one
batch per root for every blob it schedules here, ``swarm.outbox``), the parent sets the
roots push, the origin fallback's limit (``P2PConfig.fallbackLimit``) and its metric
``shoal_origin_fallback_total``, and the heartbeat (``heartbeat.Heartbeat``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from shoal.agent.download import BlobFailedError, DownloadDriver
from shoal.agent.heartbeat import Heartbeat
from shoal.cache.blob import BlobInfo
from shoal.cache.store import PieceStore
from shoal.config import Config
from shoal.control import codec
from shoal.control.client import ControlClient, RootUnavailableError
from shoal.control.schema import Pushed, UpdateRequest
from shoal.lifecycle import supervised
from shoal.observability import Metrics
from shoal.oci.digest import Digest
from shoal.oci.range import ByteRange
from shoal.peer.buffers import BufferPool
from shoal.peer.client import PeerClient
from shoal.registry.origin_fetch import Source
from shoal.registry.provider import OriginProvider
from shoal.registry.upstream import UpstreamClient
from shoal.swarm import Outbox, RootMessage, mask_of, rank_roots

log = logging.getLogger(__name__)

FALLBACK_METRIC = "shoal_origin_fallback_total"
FALLBACK_HELP = "Blobs this agent fetched from the origin itself because no root could serve"

#: blobs of one manifest joined ahead of the runtime's requests, at most
MAX_PREFETCH = 128

#: ``load()`` of the peer server: (uploads active now, bytes sent so far)
LoadSource = Callable[[], tuple[int, int]]

__all__ = ["FALLBACK_METRIC", "BlobFailedError", "SwarmProvider"]


def _quiet(fut: asyncio.Future[BlobInfo]) -> None:
    """A prefetch nobody awaited may fail; its error is logged by the download."""
    if not fut.cancelled():
        fut.exception()


class SwarmProvider:
    def __init__(
        self,
        config: Config,
        store: PieceStore,
        peers: PeerClient,
        control: ControlClient,
        fallback: OriginProvider,
        metrics: Metrics,
        *,
        load: LoadSource | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.peers = peers
        self.control = control
        self.fallback = fallback
        self.metrics = metrics
        self.peer_id = ""
        self.buffers = BufferPool()
        self.outbox = Outbox(config.swarm.download)
        self.heartbeat = Heartbeat(self, load or (lambda: (0, 0)))
        self._downloads: dict[str, DownloadDriver] = {}
        #: blobs downloading for preheat jobs only: no pull has asked for them
        #: (``agent.pacing`` paces their reads; ``agent.preheat`` starts them)
        self.preheat_only: set[str] = set()
        self._fallback_limit = asyncio.Semaphore(max(config.p2p.fallback_limit, 1))
        self._roots_seen: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._reports = asyncio.Event()

    def __repr__(self) -> str:
        return (
            f"<SwarmProvider {self.peer_id} [{len(self._downloads)} downloading] {self.outbox!r}>"
        )

    @property
    def fallback_upstream(self) -> UpstreamClient:
        return self.fallback.fetcher.upstream

    def start(self, peer_id: str) -> None:
        self.peer_id = peer_id
        self._tasks = [
            asyncio.create_task(supervised("the heartbeat to the roots", self.heartbeat.run)),
            asyncio.create_task(supervised("the reports to the roots", self._report_loop)),
        ]

    async def close(self) -> None:
        tasks = [d.task for d in self._downloads.values() if d.task is not None]
        tasks += self._tasks
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # --- what the mirror calls ------------------------------------------------------

    async def ensure(self, digest: Digest, source: Source) -> BlobInfo:
        info = self.store.lookup(str(digest))
        if info is not None and info.complete:
            return info
        return await asyncio.shield(self._download(digest, source, -1).geometry)

    async def ensure_range(self, digest: Digest, source: Source, byte_range: ByteRange) -> BlobInfo:
        """Only the pieces ``byte_range`` needs (on-demand loading), unless the whole blob
        is here or already on its way: a download that wants those pieces too."""
        key = str(digest)
        info = self.store.lookup(key)
        if info is not None and info.complete:
            return info
        driver = self._download(digest, source, 0)
        info = await asyncio.shield(driver.geometry)
        first, last = byte_range.resolve(info.size)
        driver.want(mask_of(range(first // info.piece_size, last // info.piece_size + 1)))
        return info

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
            self._download(digest, source, -1).geometry.add_done_callback(_quiet)
            started += 1
        return started

    def _download(
        self, digest: Digest, source: Source, wanted: int, *, preheat: bool = False
    ) -> DownloadDriver:
        """The blob's driver, started if need be; ``wanted`` -1: the whole blob.
        ``preheat``: for a preheat job, which a pull's download is not."""
        key = str(digest)
        driver = self._downloads.get(key)
        if driver is None:
            driver = DownloadDriver(self, digest, source, wanted=wanted)
            self._downloads[key] = driver
            driver.task = asyncio.create_task(driver.run())
            driver.task.add_done_callback(lambda task: self._ended(key, driver, task))
            if preheat:
                self.preheat_only.add(key)
        elif wanted == -1:
            driver.want(-1)
        if not preheat:
            self.preheat_only.discard(key)
        return driver

    def preheat(self, digest: Digest, source: Source) -> DownloadDriver:
        """The whole blob for a preheat job (``agent.preheat``), paced while no pull wants it."""
        return self._download(digest, source, -1, preheat=True)

    def stop_preheat(self, key: str) -> asyncio.Task[None] | None:
        """Cancel the download of ``key`` if only preheat jobs want it; its task."""
        driver = self._downloads.get(key)
        if key not in self.preheat_only or driver is None or driver.task is None:
            return None
        driver.task.cancel()
        return driver.task

    @property
    def live_downloads(self) -> int:
        """Downloads a pull of the runtime is waiting for."""
        return len(self._downloads) - len(self.preheat_only)

    def _ended(self, key: str, driver: DownloadDriver, task: asyncio.Task[None]) -> None:
        if self._downloads.get(key) is driver:
            del self._downloads[key]
            self.preheat_only.discard(key)
        if not task.cancelled() and (exc := task.exception()) is not None:
            # a bug in the driver: its waiters were failed in its ``finally``; say why
            log.error("download of %s ended by a bug", key, exc_info=exc)

    # --- the origin, when no root can serve -------------------------------------------

    async def fetch_from_origin(self, digest: Digest, source: Source, why: str) -> BlobInfo:
        """The whole blob, sealed by the origin fetcher (digest checked as it streams)."""
        async with self._fallback_limit:
            log.warning("fetching %s from the origin %s myself: %s", digest, source.host, why)
            self.metrics.inc(FALLBACK_METRIC, FALLBACK_HELP)
            info, flight = await self.fallback.fetcher.start(digest, source)
            if flight is not None:
                await flight.wait()
            done = self.store.lookup(str(digest))
            return done or info

    async def fetch_missing(self, fetch: Callable[[], Awaitable[int]]) -> int:
        """A fetch of a blob's missing pieces, under the same limit and metric."""
        async with self._fallback_limit:
            self.metrics.inc(FALLBACK_METRIC, FALLBACK_HELP)
            return await fetch()

    # --- the roots ------------------------------------------------------------------

    def roots_for(self, digest: str) -> list[str]:
        return rank_roots(digest, self.config.p2p.roots)

    def saw_root(self, root: str) -> None:
        self._roots_seen.add(root)

    @property
    def roots_seen(self) -> set[str]:
        return self._roots_seen

    def report(self, root: str, msg: RootMessage) -> None:
        self.outbox.add(root, msg)
        self._reports.set()

    def _live_roots(self) -> set[str]:
        return {
            d.machine.root
            for d in self._downloads.values()
            if d.machine.root and not d.machine.ended
        }

    async def _report_loop(self) -> None:
        """Sends the outbox's batches when due (``swarm.outbox``)."""
        loop = asyncio.get_running_loop()
        while True:
            live = self._live_roots()
            batches = self.outbox.due(loop.time(), live)
            if batches:
                await asyncio.gather(*(self._send(root, msgs) for root, msgs in batches))
                continue
            deadline = self.outbox.next_deadline(live)
            wait = 1.0 if deadline is None else max(deadline - loop.time(), 0.001)
            self._reports.clear()
            try:
                async with asyncio.timeout(min(wait, 1.0)):
                    await self._reports.wait()
                    # a new report: it may wait out the batch interval, not more
                    deadline = self.outbox.next_deadline(self._live_roots())
                    if deadline is not None:
                        await asyncio.sleep(max(deadline - loop.time(), 0.0))
            except TimeoutError:
                pass

    async def flush(self, root: str) -> None:
        """Send ``root`` what is waiting for it now."""
        if root:
            await self._send(root, self.outbox.take(root))

    async def _send(self, root: str, msgs: list[RootMessage]) -> None:
        reports = [codec.report_wire(m) for m in msgs]
        try:
            answer = await self.control.update(root, UpdateRequest(self.peer_id, reports))
        except RootUnavailableError as exc:
            now = asyncio.get_running_loop().time()
            for d in list(self._downloads.values()):
                if d.machine.root == root:
                    d._event(d.machine.on_root_silent(root, exc.busy, now))
            return
        self.deliver(answer.assignments, answer.forgotten)

    def deliver(self, assignments: list[Pushed], forgotten: list[str]) -> None:
        """Parent sets a root pushed; blobs whose swarm forgot this agent."""
        for wire in assignments:
            blob, offers = codec.pushed(wire)
            driver = self._downloads.get(blob)
            if driver is not None:
                driver.on_parents(offers)
        for blob in forgotten:
            driver = self._downloads.get(blob)
            if driver is not None:
                driver.on_forgotten()
