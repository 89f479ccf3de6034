"""The root, composed: piece store, origin fetcher, scheduler, peer server, control API.

A root is the seed of the blobs it owns (by rendezvous hashing over the root list) and
their scheduler. It fetches each blob from the origin once, announces every piece to
the scheduler as soon as it is stored (so agents start on the head of a blob while its
tail is on the wire), serves pieces like any peer, and answers agents' joins, reports
and requests for parents. Its state is soft: after a restart agents simply join again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import ssl
import time
from collections.abc import Coroutine
from types import TracebackType

from aiohttp import web

from shoal.cache.store import PieceStore
from shoal.config import Config
from shoal.control.auth import cluster_secret
from shoal.errors import DigestMismatchError, ShoalError, UpstreamUnknownError
from shoal.lifecycle import serve_app, supervised
from shoal.observability import AuditLog, Metrics, MetricType
from shoal.observability.exporter import exporter_app
from shoal.observability.node import advertise_host, node_label
from shoal.oci.digest import Digest
from shoal.peer.server import PeerServer
from shoal.peer.tls import peer_tls
from shoal.registry.egress import EgressRefusedError
from shoal.registry.origin_fetch import Flight, OriginFetcher, Source
from shoal.registry.upstream import UpstreamClient
from shoal.root.chunkbook import ChunkBook
from shoal.root.control_api import ControlAPI
from shoal.root.preheat_api import PreheatAPI
from shoal.swarm import (
    Assignment,
    BlobFailure,
    BlobView,
    Have,
    Join,
    PeerDead,
    RootMessage,
    Scheduler,
)

log = logging.getLogger(__name__)

#: seconds a failed blob (digest mismatch at the origin) is refused before a new try
FAILURE_MEMORY = 30.0


class Root:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.metrics = Metrics(
            node_label(config, config.proxy.port), "root", window_s=config.exporter.rate_window
        )
        self.audit = AuditLog.from_config(config.deploy)
        self.secret = cluster_secret(config.p2p.secret, config.p2p.secret_file)
        self.upstream = UpstreamClient(config.upstream)
        self.store = PieceStore.from_config(
            config.cache,
            disk_meter=lambda n, s: self.metrics.record(MetricType.DISK, n, s),
            audit=self.audit,
        )
        self.metrics.set_cache_source(self.store.usage)
        self.scheduler = Scheduler(config.swarm.scheduler)
        self.chunks = ChunkBook()
        self.fetcher = OriginFetcher(
            self.store,
            self.upstream,
            self.metrics,
            self.audit,
            on_piece=self._on_piece,
            concurrency=config.proxy.proxy_concurrency_limit,
        )
        self.peer_server = PeerServer(
            self.store,
            self.secret,
            host=config.p2p.listen,
            port=config.p2p.p2p_port,
            node="root",
            throttle_mb=config.p2p.throttle_limit_mb,
            congestion=config.p2p.congestion,
            metrics=self.metrics,
            audit=self.audit,
            ssl=_server_tls(config),
        )
        self.preheat = PreheatAPI(config.preheat, self.upstream, self.metrics, self.audit)
        self.peer_id = ""
        self.control_port = 0
        self.exporter_port = 0
        self._failed: dict[str, tuple[float, BlobFailure, str]] = {}
        self._opening: dict[str, asyncio.Future[tuple[BlobFailure, str] | None]] = {}
        self._last_seen: dict[str, float] = {}
        self._holders: dict[str, set[str]] = {}
        self._mailbox: dict[str, dict[str, Assignment]] = {}
        self.incarnation = secrets.token_hex(8)
        self._tasks: set[asyncio.Task[None]] = set()
        self._runners: list[web.AppRunner] = []

    def __repr__(self) -> str:
        return (
            f"<Root {self.peer_id} {self.scheduler!r} {self.fetcher!r} "
            f"[{len(self._last_seen)} agents seen]>"
        )

    # --- lifecycle -------------------------------------------------------------------

    async def __aenter__(self) -> Root:
        try:
            await self.store.open()
            await self.peer_server.start()
            host = self.config.p2p.advertise or advertise_host(self.config)
            self.peer_id = f"{host}:{self.peer_server.port}"
            self.peer_server.node = self.peer_id
            self.metrics.node = node_label(self.config, self.peer_server.port)
            api = ControlAPI(self, self.secret, self.preheat)
            self.control_port = await self._serve(api.app(), self.config.proxy.port)
            if self.config.exporter.enable:
                self.exporter_port = await self._serve(
                    exporter_app(self.metrics), self.config.exporter.port
                )
            self._spawn(supervised("the root's sweep of silent agents", self._sweep))
        except BaseException:
            await self.close()
            raise
        log.info(
            "root %s: control on port %d (%s), metrics on port %s",
            self.peer_id,
            self.control_port,
            "TLS" if self.config.control.tls else "PLAIN HTTP",
            self.exporter_port or "off",
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _serve(self, app: web.Application, port: int) -> int:
        runner, bound = await serve_app(app, self.config.proxy.listen, port)
        self._runners.append(runner)
        return bound

    def _spawn(self, coro: Coroutine[object, object, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners = []
        await self.peer_server.close()
        await self.fetcher.close()
        await self.store.close()
        await self.upstream.close()
        self.audit.close()

    # --- what the control API asks of the root ---------------------------------------

    def seen(self, peer: str) -> None:
        now = time.monotonic()
        self._last_seen[peer] = now
        self.scheduler.seen(peer, now)

    def hold(self, peer: str, digest: Digest) -> None:
        key = str(digest)
        log.info("%s holds %s", peer, key)
        try:
            swarm = self.scheduler.swarm(key)
        except ShoalError:
            holders = self._holders.setdefault(key, set())
            if len(holders) < 64:
                holders.add(peer)
            return
        self.schedule(Join(peer, key, have=swarm.full))

    def failure(self, blob: str) -> tuple[BlobFailure, str] | None:
        entry = self._failed.get(blob)
        if entry is None:
            return None
        if entry[0] < time.monotonic():
            del self._failed[blob]
            return None
        return entry[1], entry[2]

    def schedule(self, msg: RootMessage) -> Assignment | None:
        now = time.monotonic()
        answer = self.scheduler.handle(msg, now)
        self._collect(now)
        return answer

    def _collect(self, now: float) -> None:
        for pushed in self.scheduler.take_updates(now):
            self._mailbox.setdefault(pushed.peer, {})[pushed.blob] = pushed

    def drain(self, peer: str) -> list[Assignment]:
        return list(self._mailbox.pop(peer, {}).values())

    async def open_blob(self, digest: Digest, source: Source) -> tuple[BlobFailure, str] | None:
        key = str(digest)
        failed = self.failure(key)
        if failed is not None:
            return failed
        try:
            self.scheduler.swarm(key)
            return None
        except ShoalError:
            pass
        waiting = self._opening.get(key)
        if waiting is None:
            waiting = asyncio.get_running_loop().create_future()
            self._opening[key] = waiting
            try:
                waiting.set_result(await self._open(digest, source))
            except (UpstreamUnknownError, EgressRefusedError) as exc:
                # the root's own upstream policy: an agent going to the origin itself
                # would be refused the same way
                waiting.set_result((BlobFailure.SOURCE_REFUSED, exc.message))
            except ShoalError as exc:
                waiting.set_result((BlobFailure.ORIGIN_UNAVAILABLE, exc.message))
            finally:
                del self._opening[key]
        return await asyncio.shield(waiting)

    async def _open(self, digest: Digest, source: Source) -> tuple[BlobFailure, str] | None:
        key = str(digest)
        info, flight = await self.fetcher.start(digest, source)
        now = time.monotonic()
        swarm = self.scheduler.add_blob(key, info.size, info.piece_size, self.peer_id, now)
        for holder in self._holders.pop(key, ()):
            self.schedule(Join(holder, key, have=swarm.full))
        present = tuple(i for i in range(info.piece_count) if info.has(i))
        if present:
            self.schedule(Have(self.peer_id, key, present))
        if flight is not None:
            self._spawn(self._watch(key, flight))
        return None

    async def _watch(self, key: str, flight: Flight) -> None:
        try:
            await flight.wait()
        except DigestMismatchError as exc:
            log.error("blob %s FAILED for every agent: %s", key, exc.message)
            until = time.monotonic() + FAILURE_MEMORY
            self._failed[key] = (until, BlobFailure.DIGEST_MISMATCH, exc.message)
            self.scheduler.drop_blob(key)
            self.chunks.drop(key)
        except ShoalError as exc:
            log.error("origin fetch of %s failed: %s", key, exc.message)
            until = time.monotonic() + 5.0
            self._failed[key] = (until, BlobFailure.ORIGIN_UNAVAILABLE, exc.message)
            self.scheduler.drop_blob(key)
            self.chunks.drop(key)

    def _on_piece(self, digest: str, index: int, _sha: bytes, chunks: bytes) -> None:
        self.chunks.add(digest, index, chunks)
        try:
            self.schedule(Have(self.peer_id, digest, (index,)))
        except ShoalError:
            pass  # the swarm was dropped (a failure) while a piece was in flight

    async def wait_piece(self, blob: str, index: int) -> None:
        with contextlib.suppress(ShoalError):  # gone or abandoned: the state says why
            await self.store.wait_piece(blob, index)

    def view(self, blob: str, known: int, failure: tuple[BlobFailure, str] | None) -> BlobView:
        info = self.store.lookup(blob)
        if info is None:
            code, reason = failure or (BlobFailure.UNKNOWN_BLOB, "unknown blob")
            return BlobView(blob, hashes_from=known, failure=code, reason=reason, seed=self.peer_id)
        hashes: list[bytes] = []
        for h in info.hashes[max(known, 0) :]:
            if h is None:
                break
            hashes.append(h)
        return BlobView(
            blob,
            info.size,
            info.piece_size,
            known,
            tuple(hashes),
            chunks=self.chunks.get(blob, max(known, 0), len(hashes)),
            complete=info.complete,
            failure=None if failure is None else failure[0],
            reason="" if failure is None else failure[1],
            seed=self.peer_id,
        )

    async def _sweep(self) -> None:
        timeout = self.config.swarm.scheduler.peer_timeout
        while True:
            await asyncio.sleep(timeout / 3)
            horizon = time.monotonic() - timeout
            for peer, last in list(self._last_seen.items()):
                if last < horizon:
                    del self._last_seen[peer]
                    log.info("agent %s silent for %.0fs: dropped from every swarm", peer, timeout)
                    self.schedule(PeerDead(peer))


def _server_tls(config: Config) -> ssl.SSLContext | None:
    tls = peer_tls(config.p2p)  # P2PConfig.tls: pieces over TLS
    return None if tls is None else tls.server
