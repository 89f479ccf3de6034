"""The agent's heartbeat to its roots: liveness, real load, and what a new root lacks.

Every ``INTERVAL`` seconds each configured root gets a health call; a root whose
incarnation changed (it restarted, its soft state is gone) is told which whole blobs
this agent holds, so it can hand them out again at once. A root this agent schedules
downloads with also gets a ``Load`` report: the uploads the peer server is serving now
and its upload rate since the last beat, which the scheduler's free-upload score uses.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from shoal.cache.store import PieceStore
from shoal.config import Config
from shoal.control import codec
from shoal.control.client import ControlClient, RootUnavailableError
from shoal.control.schema import Health, HoldRequest, Pushed, UpdateRequest
from shoal.swarm import Load

log = logging.getLogger(__name__)

#: seconds between beats (a root drops an agent silent for 15 s)
INTERVAL = 2.0


class HeartbeatHost(Protocol):
    """What the heartbeat needs of the agent's swarm (``swarm.SwarmProvider``)."""

    config: Config
    store: PieceStore
    control: ControlClient
    peer_id: str

    @property
    def roots_seen(self) -> set[str]: ...

    def roots_for(self, digest: str) -> list[str]: ...

    def deliver(self, assignments: list[Pushed], forgotten: list[str]) -> None: ...


class Heartbeat:
    def __init__(self, provider: HeartbeatHost, load: Callable[[], tuple[int, int]]) -> None:
        self.p = provider
        self._load = load
        self._incarnations: dict[str, str] = {}
        self._sent = 0
        self._at = 0.0
        #: per root, the last failure in words ("" while it answers)
        self.status: dict[str, str] = {}
        #: called with every root's health answer (``agent.preheat`` polls for work when
        #: the answer's ``preheat`` counter moved); must not raise
        self.on_health: Callable[[str, Health], Awaitable[None]] | None = None

    def __repr__(self) -> str:
        down = [r for r, why in self.status.items() if why]
        return f"<Heartbeat [{len(self.status) - len(down)} roots answering, down: {down}]>"

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self._at = loop.time()
        self._sent = self._load()[1]
        while True:
            await asyncio.sleep(INTERVAL)
            load = self.load_report(loop.time())
            await asyncio.gather(*(self.beat(root, load) for root in self.p.config.p2p.roots))

    def load_report(self, now: float) -> Load:
        uploads, sent = self._load()
        span = max(now - self._at, 1e-3)
        rate = max(sent - self._sent, 0) / span
        self._sent, self._at = sent, now
        return Load(self.p.peer_id, uploads, rate)

    async def beat(self, root: str, load: Load) -> None:
        try:
            health = await self.p.control.health(root)
            if self._incarnations.get(root) != health.incarnation:
                held = self._held_for(root)
                if held:
                    await self.p.control.hold(root, HoldRequest(self.p.peer_id, held))
            self._incarnations[root] = health.incarnation
            if self.on_health is not None:
                await self.on_health(root, health)
            if root in self.p.roots_seen:
                req = UpdateRequest(self.p.peer_id, [codec.report_wire(load)])
                answer = await self.p.control.update(root, req)
                self.p.deliver(answer.assignments, answer.forgotten)
            if self.status.get(root):
                log.info("root %s answers again", root)
            self.status[root] = ""
        except RootUnavailableError as exc:
            if not self.status.get(root):
                log.warning("root %s does not answer the heartbeat: %s", root, exc.message)
            self.status[root] = exc.message
            self._incarnations.pop(root, None)

    def _held_for(self, root: str) -> list[str]:
        held = []
        for digest in self.p.store.digests():
            info = self.p.store.lookup(digest)
            if info is not None and info.complete and self.p.roots_for(digest)[0] == root:
                held.append(digest)
        return held
