"""The agent's preheat work: fetch a job's blobs exactly as a pull would, keep them.

The roots hold the jobs (``shoal.root.preheat``). Every heartbeat answer carries the
root's preheat counter; when it moves (or every ``IDLE_POLLS`` beats, so the root knows
this agent is there for ``count`` and ``percent`` jobs) the agent polls that root, in a
signed call, with its progress and the jobs it holds, and gets its new work.

For each job, in order:

1. **The access check, first, for every blob**: the origin must say yes to the job's
   credentials (``registry.access``: a ``HEAD`` of each blob, as the mirror asks for a
   pull) before anything is downloaded. A refusal fails the job on this node and
   nothing is stored: the peer network is no way around a registry's access control,
   for a preheat as for a pull.
2. **The swarm's own download** (``SwarmProvider.preheat``): the blob's root in
   rendezvous order, parents from it, every piece checked against the root's hash
   before it is stored, the origin once per blob (by the root). Reads are paced
   (``agent.pacing``) while no pull wants the blob. The job's blobs go in order, each
   once a quarter of the one before is stored (``agent.sequence``).
3. **Kept until the TTL ends** (``PieceStore.keep``): other blobs are evicted first;
   when the cache needs the room anyway the store says so and
   ``shoal_preheat_evicted_total`` counts it.
4. **Progress to the root**: in the next poll, and at once when the job ends here.

Besides the heartbeat's polls, the agent keeps one *watch* open at each root (a poll
with ``wait``): the root answers it the moment a job for this agent is created or
cancelled, so work starts within a round trip of the job, not at the next heartbeat.

A cancelled job stops its reads of blobs no pull wants and gives up its hold. Jobs are
soft state on both sides: an agent restarted mid-job is sent the work again (it lists
the jobs it holds; the store still has what landed); a root that restarted forgets its
jobs, and the agents keep what they hold until their own TTL ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Literal

from shoal.agent.pacing import PreheatGate
from shoal.agent.sequence import StoreProgress
from shoal.agent.swarm import SwarmProvider
from shoal.config import Config
from shoal.control.client import RootUnavailableError
from shoal.control.preheat import BlobRef, NodePhase, PollAnswer, PollRequest, Progress, Work
from shoal.control.schema import Health
from shoal.errors import ShoalError
from shoal.observability import AuditLog, Metrics
from shoal.observability.audit import PREHEAT_BLOB, PREHEAT_JOB
from shoal.observability.collectors import PREHEAT_BLOB as BLOB_SECONDS
from shoal.oci.digest import parse_digest
from shoal.registry.access import AccessChecker
from shoal.registry.origin_fetch import Source

log = logging.getLogger(__name__)

#: heartbeats between polls when nothing changed (the root forgets an agent after 60 s)
IDLE_POLLS = 5
#: seconds a watch asks the root to hold it (``PollRequest.wait``)
WATCH = 20.0
#: seconds before watching a root again that failed or answered a watch at once with
#: nothing (an older root that does not hold watches); doubled up to ``WATCH_BACKOFF``
WATCH_PAUSE = 2.0
WATCH_BACKOFF = 60.0
BLOBS_METRIC = "shoal_preheat_blobs_total"
BLOBS_HELP = "Blobs of preheat jobs by result: fetched, present (already here), failed, denied"
KEPT_METRIC = "shoal_preheat_kept_bytes"
KEPT_HELP = "Bytes of blobs this node keeps for preheat jobs until their TTL ends"
EVICTED_METRIC = "shoal_preheat_evicted_total"
EVICTED_HELP = "Preheated blobs evicted before their TTL ended because the cache needed the room"
JOBS_METRIC = "shoal_preheat_node_jobs_total"
JOBS_HELP = "Preheat jobs on this node by how they ended here: done, failed, cancelled"


@dataclass(slots=True)
class NodeJob:
    work: Work
    root: str
    expires: float  # the loop's clock
    state: NodePhase = "pending"
    reason: str = ""
    done: set[str] = field(default_factory=set)
    task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<NodeJob {self.work.job} {self.state} [{len(self.done)}/{len(self.work.blobs)}]>"


class PreheatRunner:
    def __init__(
        self,
        config: Config,
        swarm: SwarmProvider,
        gate: PreheatGate,
        metrics: Metrics,
        audit: AuditLog,
    ) -> None:
        self.config = config
        self.swarm = swarm
        self.gate = gate
        self.metrics = metrics
        self.audit = audit
        self.access = AccessChecker(swarm.fallback_upstream, config.upstream.access_check_ttl)
        self.node = config.deploy.node_name or socket.gethostname()
        self.jobs: dict[str, NodeJob] = {}
        self._seen: dict[str, int] = {}
        self._beats: dict[str, int] = {}
        self._dirty: set[str] = set()
        self._polling: dict[str, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        for result in ("fetched", "present", "failed", "denied"):
            metrics.inc(BLOBS_METRIC, BLOBS_HELP, 0.0, result=result)
        for result in ("done", "failed", "cancelled"):
            metrics.inc(JOBS_METRIC, JOBS_HELP, 0.0, result=result)
        metrics.inc(EVICTED_METRIC, EVICTED_HELP, 0.0)
        metrics.set_gauge(KEPT_METRIC, KEPT_HELP, 0.0)
        swarm.store.on_kept_evicted = self._evicted
        self.progress = StoreProgress(swarm.store)  # a job's blobs go in order

    def __repr__(self) -> str:
        return f"<PreheatRunner {self.node} {list(self.jobs.values())!r} {self.gate!r}>"

    def start(self) -> None:
        """Watch every configured root for work (in a running loop)."""
        for root in self.config.p2p.roots:
            self._spawn(self._watch(root))

    async def close(self) -> None:
        tasks = [*self._tasks, *self._polling.values()]
        tasks += [j.task for j in self.jobs.values() if j.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _spawn(self, coro: Coroutine[object, object, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # --- talking to the roots ----------------------------------------------------------

    async def on_health(self, root: str, health: Health) -> None:
        """The heartbeat's hook: poll ``root`` when its jobs changed, this agent has news
        for it, or every ``IDLE_POLLS`` beats; never blocks the heartbeat."""
        self._expire()
        beats = self._beats.get(root, 0) + 1
        self._beats[root] = beats
        busy = any(j.root == root and j.state == "running" for j in self.jobs.values())
        due = self._seen.get(root) != health.preheat or root in self._dirty or busy
        if due or beats % IDLE_POLLS == 0:
            self.poll_soon(root, health.preheat)

    def poll_soon(self, root: str, generation: int | None = None) -> None:
        running = self._polling.get(root)
        if running is not None and not running.done():
            self._dirty.add(root)  # again once this one is through
            return
        self._polling[root] = asyncio.create_task(self._poll(root, generation))

    def _request(self, root: str, wait: float = 0.0) -> PollRequest:
        mine = [j for j in self.jobs.values() if j.root == root]
        progress = [self._progress(j) for j in mine]
        return PollRequest(
            self.swarm.peer_id, self.node, progress, held=[j.work.job for j in mine], wait=wait
        )

    async def _poll(self, root: str, generation: int | None) -> None:
        self._dirty.discard(root)
        try:
            answer = await self.swarm.control.preheat_poll(root, self._request(root))
        except RootUnavailableError as exc:
            log.debug("preheat poll of %s: %s", root, exc.message)
            self._dirty.add(root)
            return
        if generation is not None:
            self._seen[root] = generation
        self._take(root, answer)

    def _take(self, root: str, answer: PollAnswer) -> None:
        for job_id in answer.cancelled:
            self._cancel(job_id)
        for work in answer.work:
            self._start(root, work)

    async def _watch(self, root: str) -> None:
        """One watch at a time at ``root``, for as long as the agent runs."""
        loop = asyncio.get_running_loop()
        pause = WATCH_PAUSE
        while True:
            asked = loop.time()
            try:
                answer = await self.swarm.control.preheat_poll(root, self._request(root, WATCH))
            except RootUnavailableError as exc:
                log.debug("preheat watch of %s: %s", root, exc.message)
                answer = None
            if answer is not None:
                self._seen[root] = answer.generation
                self._take(root, answer)
                if answer.work or answer.cancelled or loop.time() - asked >= WATCH / 2:
                    pause = WATCH_PAUSE
                    continue
            await asyncio.sleep(pause)
            pause = min(pause * 2, WATCH_BACKOFF)

    def _progress(self, job: NodeJob) -> Progress:
        done_bytes = 0
        for blob in job.work.blobs:
            if blob.digest in job.done:
                done_bytes += blob.size
                continue
            info = self.swarm.store.lookup(blob.digest)
            if info is not None:
                done_bytes += min(info.present_count * info.piece_size, info.size)
        return Progress(job.work.job, job.state, len(job.done), done_bytes, job.reason)

    # --- one job ---------------------------------------------------------------------

    def _start(self, root: str, work: Work) -> None:
        if work.job in self.jobs:
            return
        loop = asyncio.get_running_loop()
        job = NodeJob(work, root, loop.time() + work.ttl)
        self.jobs[work.job] = job
        self._rates()
        job.task = asyncio.create_task(self._run(job))
        log.info(
            "preheat job %s: %d blobs of %s/%s", work.job, len(work.blobs), work.host, work.name
        )

    def _rates(self) -> None:
        self.gate.set_job_rates(
            [j.work.rate for j in self.jobs.values() if j.state in ("pending", "running")]
        )

    async def _run(self, job: NodeJob) -> None:
        work = job.work
        source = Source(work.host, work.name, work.authorization)
        started = time.perf_counter()
        job.state = "running"
        self._dirty.add(job.root)
        try:
            await self._check_access(work)
            fetches: list[asyncio.Task[None]] = []
            try:
                for blob in work.blobs:
                    fetch = asyncio.create_task(self._fetch(job, blob, source))
                    fetches.append(fetch)
                    await self.progress.until_share(blob.digest, fetch)
                    if fetch.done():
                        fetch.result()  # a failed blob fails the job before the next starts
                await asyncio.gather(*fetches)
            finally:
                for fetch in fetches:
                    fetch.cancel()
                await asyncio.gather(*fetches, return_exceptions=True)
        except ShoalError as exc:
            self._end(job, "failed", exc.message, started)
            return
        self._end(job, "done", "", started)

    async def _check_access(self, work: Work) -> None:
        """Rule 1: every blob readable with the job's credentials, before any byte."""

        async def check(blob: BlobRef) -> None:
            try:
                await self.access.check(
                    work.host, work.name, parse_digest(blob.digest), work.authorization
                )
            except ShoalError:
                self.metrics.inc(BLOBS_METRIC, BLOBS_HELP, result="denied")
                raise

        await asyncio.gather(*(check(b) for b in work.blobs))

    async def _fetch(self, job: NodeJob, blob: BlobRef, source: Source) -> None:
        store = self.swarm.store
        store.keep(blob.digest)
        info = store.lookup(blob.digest)
        if info is not None and info.complete:
            job.done.add(blob.digest)
            self.metrics.inc(BLOBS_METRIC, BLOBS_HELP, result="present")
            self.metrics.observe(BLOB_SECONDS, 0.0, result="present")
            self._kept()
            return
        started = time.perf_counter()
        driver = self.swarm.preheat(parse_digest(blob.digest), source)
        assert driver.task is not None
        with contextlib.suppress(Exception):
            await asyncio.shield(driver.task)
        info = store.lookup(blob.digest)
        took = time.perf_counter() - started
        if info is None or not info.complete:
            why = "download ended without the whole blob"
            if driver.geometry.done() and not driver.geometry.cancelled():
                exc = driver.geometry.exception()
                if isinstance(exc, ShoalError):
                    why = exc.message
            self.metrics.inc(BLOBS_METRIC, BLOBS_HELP, result="failed")
            self.metrics.observe(BLOB_SECONDS, took, result="failed")
            self.audit.record(PREHEAT_BLOB, blob.digest, 0, -1, took)
            raise ShoalError(f"{blob.digest}: {why}")
        job.done.add(blob.digest)
        self.metrics.inc(BLOBS_METRIC, BLOBS_HELP, result="fetched")
        self.metrics.observe(BLOB_SECONDS, took, result="fetched")
        self.audit.record(PREHEAT_BLOB, blob.digest, 0, blob.size, took)
        self._dirty.add(job.root)
        self._kept()

    def _end(self, job: NodeJob, state: Literal["done", "failed"], reason: str, t0: float) -> None:
        job.state = state
        job.reason = reason
        size = sum(b.size for b in job.work.blobs)
        self.audit.record(
            PREHEAT_JOB, f"{job.work.host}/{job.work.name}", 0,
            size if state == "done" else -1, time.perf_counter() - t0,
        )  # fmt: skip
        self.metrics.inc(JOBS_METRIC, JOBS_HELP, result=state)
        if state == "failed":
            log.warning("preheat job %s failed here: %s", job.work.job, reason)
            self._release(job)
        else:
            log.info("preheat job %s done here", job.work.job)
        self._rates()
        self.poll_soon(job.root)  # the root hears of the end at once

    # --- the end of a job ------------------------------------------------------------

    def _cancel(self, job_id: str) -> None:
        job = self.jobs.pop(job_id, None)
        if job is None:
            return
        log.info("preheat job %s cancelled", job_id)
        if job.task is not None and not job.task.done():
            job.task.cancel()
        self.metrics.inc(JOBS_METRIC, JOBS_HELP, result="cancelled")
        self._release(job)
        self._spawn(self._drop_partial(job))
        self._rates()

    def _expire(self) -> None:
        now = asyncio.get_running_loop().time()
        for job_id, job in list(self.jobs.items()):
            if now >= job.expires:
                log.info("preheat job %s: TTL over, blobs no longer kept", job_id)
                del self.jobs[job_id]
                if job.task is not None and not job.task.done():
                    job.task.cancel()
                self._release(job)
                self._rates()

    def _release(self, job: NodeJob) -> None:
        """Unkeep the job's blobs that no other job here keeps."""
        others = {
            b.digest for j in self.jobs.values() if j is not job for b in j.work.blobs
        } if self.jobs else set()  # fmt: skip
        for blob in job.work.blobs:
            if blob.digest not in others:
                self.swarm.store.unkeep(blob.digest)
        self._kept()

    async def _drop_partial(self, job: NodeJob) -> None:
        """Reads of blobs only this job wanted stop; what landed of them goes."""
        wanted = {b.digest for j in self.jobs.values() for b in j.work.blobs}
        for blob in job.work.blobs:
            if blob.digest in wanted or blob.digest not in self.swarm.preheat_only:
                continue
            task = self.swarm.stop_preheat(blob.digest)
            if task is not None:
                with contextlib.suppress(BaseException):
                    await task
            info = self.swarm.store.lookup(blob.digest)
            if info is not None and not info.complete:
                await self.swarm.store.remove(blob.digest)

    def _kept(self) -> None:
        store = self.swarm.store
        total = 0
        for digest in {b.digest for j in self.jobs.values() for b in j.work.blobs}:
            info = store.lookup(digest)
            if info is not None and info.complete and store.kept(digest):
                total += info.size
        self.metrics.set_gauge(KEPT_METRIC, KEPT_HELP, float(total))

    def _evicted(self, digest: str) -> None:
        self.metrics.inc(EVICTED_METRIC, EVICTED_HELP)
        log.warning("preheated blob %s evicted before its TTL: the cache needed the room", digest)
        self._kept()
