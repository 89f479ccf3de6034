"""The node agent, composed: metrics, audit log, upstream client, mirror, exporter.

``async with Agent(config) as agent:`` starts every listener and owns every task; leaving
the block stops them in reverse order. Ports given as 0 are chosen by the kernel and can
be read back (``agent.proxy_port``), which is how tests run several agents side by side.

At start the agent checks its roots (``roots.RootWatch``: reachable, a root's control
port, the same secret) without waiting for them, since roots may start after agents;
the mirror port answers ``/healthz`` and ``/readyz`` for the kubelet's probes
(``health.py``), and ``shoal_origin_fallback_total`` is exported at 0 from the start.
"""

from __future__ import annotations

import logging
from types import TracebackType

from aiohttp import web

from shoal.agent.health import health_routes
from shoal.agent.pacing import PacedPeerClient, PreheatGate
from shoal.agent.preheat import PreheatRunner
from shoal.agent.roots import RootWatch, check_roots, export_fallback_counter
from shoal.agent.swarm import SwarmProvider
from shoal.cache.store import PieceStore
from shoal.config import Config
from shoal.control.auth import cluster_secret
from shoal.control.client import ControlClient
from shoal.lifecycle import serve_app
from shoal.observability import AuditLog, Metrics, MetricType
from shoal.observability.exporter import exporter_app
from shoal.observability.node import advertise_host, node_label
from shoal.peer.server import PeerServer
from shoal.peer.tls import peer_tls
from shoal.registry.mirror import Mirror
from shoal.registry.origin_fetch import OriginFetcher
from shoal.registry.provider import BlobProvider, OriginProvider
from shoal.registry.upstream import UpstreamClient

log = logging.getLogger(__name__)


class Agent:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.metrics = Metrics(
            node_label(config, config.proxy.port),
            config.deploy.mode,
            window_s=config.exporter.rate_window,
        )
        self.audit = AuditLog.from_config(config.deploy)
        self.upstream = UpstreamClient(config.upstream)
        self.store: PieceStore | None = None
        self.fetcher: OriginFetcher | None = None
        self.peer_server: PeerServer | None = None
        self.peer_client: PacedPeerClient | None = None
        self.control: ControlClient | None = None
        self.swarm: SwarmProvider | None = None
        self.roots: RootWatch | None = None
        self.preheat: PreheatRunner | None = None
        self.peer_id = ""
        check_roots(config.p2p.roots)
        export_fallback_counter(self.metrics)
        provider: BlobProvider | None = None
        if config.cache.path:
            self.store = PieceStore.from_config(
                config.cache,
                disk_meter=lambda n, s: self.metrics.record(MetricType.DISK, n, s),
                audit=self.audit,
            )
            self.metrics.set_cache_source(self.store.usage)
            self.fetcher = OriginFetcher(
                self.store,
                self.upstream,
                self.metrics,
                self.audit,
                concurrency=config.proxy.proxy_concurrency_limit,
            )
            provider = OriginProvider(self.store, self.fetcher)
            if config.p2p.roots:
                secret = cluster_secret(config.p2p.secret, config.p2p.secret_file)
                tls = peer_tls(config.p2p)  # P2PConfig.tls: pieces over TLS
                self.peer_server = PeerServer(
                    self.store,
                    secret,
                    host=config.p2p.listen,
                    port=config.p2p.p2p_port,
                    throttle_mb=config.p2p.throttle_limit_mb,
                    congestion=config.p2p.congestion,
                    metrics=self.metrics,
                    audit=self.audit,
                    ssl=None if tls is None else tls.server,
                )
                # a read queued at a parent ends with the parent's answer (it holds it
                # ``piece_wait``) or the picker's ``queueTimeout``: the client's own
                # limit is only for a connection that died without saying so
                queued = config.swarm.picker.queue_timeout
                self.peer_client = PacedPeerClient(
                    secret,
                    metrics=self.metrics,
                    request_timeout=2 * queued + 5,
                    ssl=None if tls is None else tls.client,
                )
                self.control = ControlClient(
                    secret, timeout=config.p2p.root_timeout, control=config.control
                )
                self.swarm = SwarmProvider(
                    config,
                    self.store,
                    self.peer_client,
                    self.control,
                    provider,
                    self.metrics,
                    load=self.peer_server.load,
                )
                if config.preheat.enable:
                    gate = PreheatGate(
                        self.swarm,
                        self.metrics,
                        rate_mb=config.preheat.rate_limit_mb,
                        yield_to_pulls=config.preheat.yield_to_pulls,
                    )
                    self.peer_client.gate = gate
                    self.preheat = PreheatRunner(config, self.swarm, gate, self.metrics, self.audit)
                    self.swarm.heartbeat.on_health = self.preheat.on_health
                self.roots = RootWatch(config, secret, self.metrics)
                self.roots.follow(self.swarm.heartbeat.status)
                provider = self.swarm
        self.mirror = Mirror(config, self.upstream, self.metrics, self.audit, provider=provider)
        self._runners: list[web.AppRunner] = []
        self.proxy_port = 0
        self.exporter_port = 0

    def __repr__(self) -> str:
        return f"<Agent proxy=:{self.proxy_port} exporter=:{self.exporter_port} {self.mirror!r}>"

    async def __aenter__(self) -> Agent:
        try:
            if self.store is not None:
                await self.store.open()
            if self.peer_server is not None and self.swarm is not None:
                await self.peer_server.start()
                host = self.config.p2p.advertise or advertise_host(self.config)
                self.peer_id = f"{host}:{self.peer_server.port}"
                self.peer_server.node = self.peer_id
                if self.peer_client is not None:  # its parents know it by this name
                    self.peer_client.node = self.peer_id
                self.swarm.start(self.peer_id)
                if self.preheat is not None:
                    self.preheat.start()
            if self.roots is not None:
                await self.roots.__aenter__()
            app = self.mirror.app()
            app.add_routes(health_routes(self.roots))
            self.proxy_port = await self._serve(app, self.config.proxy.port)
            self.metrics.node = self._node_label()
            exporter = self.config.exporter
            if exporter.enable and exporter.standalone_exporter_port:
                self.exporter_port = await self._serve(exporter_app(self.metrics), exporter.port)
            elif exporter.enable:
                self.exporter_port = self.proxy_port
        except BaseException:
            await self.close()
            raise
        log.info(
            "agent serving: mirror on port %d, metrics on port %s",
            self.proxy_port,
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

    def _node_label(self) -> str:
        """``IP:port`` of the mirror; the advertised address when there is one, since
        a host-network agent's own name may resolve to a loopback address."""
        advertise = self.config.p2p.advertise
        if advertise and not self.config.deploy.node_name:
            return f"{advertise}:{self.proxy_port}"
        return node_label(self.config, self.proxy_port)

    async def _serve(self, app: web.Application, port: int) -> int:
        runner, bound = await serve_app(app, self.config.proxy.listen, port)
        self._runners.append(runner)
        return bound

    async def close(self) -> None:
        runners, self._runners = self._runners, []
        for runner in reversed(runners):
            await runner.cleanup()
        if self.roots is not None:
            await self.roots.close()
        if self.preheat is not None:
            await self.preheat.close()
        if self.swarm is not None:
            await self.swarm.close()
        if self.peer_server is not None:
            await self.peer_server.close()
        if self.peer_client is not None:
            await self.peer_client.close()
        if self.control is not None:
            await self.control.close()
        if self.fetcher is not None:
            await self.fetcher.close()
        if self.store is not None:
            await self.store.close()
        await self.upstream.close()
        self.audit.close()
