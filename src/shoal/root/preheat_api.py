"""The root's preheat routes: the job API for operators, the poll for agents.

``/preheat/v1/jobs`` (create, list, get, cancel) is signed with the **operator
credential** (``PreheatConfig.secret``), not the cluster secret: every node holds the
cluster secret, and a job makes every agent it targets fetch an image and keep it, so a
compromised node must not be able to start one. Without an operator credential the job
API answers ``403`` and says which key to set. ``/preheat/v1/poll`` is an agent's call,
signed with the cluster secret and vetted like a join (``root.vetting``); with
``PreheatConfig.checkSource`` (the default) its work, which carries the job's registry
credentials, goes only to a poll from the address the agent advertises.

The control API's transport (signature from the headers alone, body limits, nonces)
stays in ``control_api``; it asks ``secret_for(path)`` which secret a route is signed
with.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

import msgspec
from aiohttp import web

from shoal.config import PreheatConfig
from shoal.control.preheat import JobList, JobSpec, JobState, PollAnswer, PollRequest
from shoal.control.preheat_client import operator_secret
from shoal.errors import AccessDeniedError, NameInvalidError, ShoalError
from shoal.lifecycle import supervised
from shoal.observability import AuditLog, Metrics
from shoal.observability.audit import PREHEAT_JOB
from shoal.oci.reference import split_image
from shoal.registry.upstream import UpstreamClient
from shoal.root.preheat import Job, PreheatBook, peer_host
from shoal.root.preheat_resolve import resolve

log = logging.getLogger(__name__)

JOBS = "/preheat/v1/jobs"
POLL = "/preheat/v1/poll"
#: bytes a signed body may have, by route
BODY_LIMITS = {JOBS: 64 << 10, POLL: 256 << 10}
#: seconds between sweeps of expired jobs and silent agents
SWEEP = 5.0
#: seconds a watching poll (``PollRequest.wait``) is held at most
MAX_WATCH = 25.0
JOBS_METRIC = "shoal_preheat_jobs_total"
JOBS_HELP = "Preheat jobs at this root by what became of them (created, done, failed, ...)"
RUNNING_METRIC = "shoal_preheat_jobs_running"
RUNNING_HELP = "Preheat jobs at this root not yet done, failed, cancelled or expired"


class JobApiOffError(AccessDeniedError):
    pass


class PreheatAPI:
    def __init__(
        self,
        config: PreheatConfig,
        upstream: UpstreamClient,
        metrics: Metrics,
        audit: AuditLog,
    ) -> None:
        self.config = config
        self.book = PreheatBook(config)
        self.upstream = upstream
        self.metrics = metrics
        self.audit = audit
        self.operator = operator_secret(config)
        #: set (and replaced) whenever the book's generation moves: wakes the watches
        self._moved: asyncio.Event | None = None
        self._seen_generation = self.book.generation
        self._closing = False
        for result in ("created", "done", "failed", "cancelled", "expired"):
            metrics.inc(JOBS_METRIC, JOBS_HELP, 0.0, result=result)
        metrics.set_gauge(RUNNING_METRIC, RUNNING_HELP, 0.0)

    def __repr__(self) -> str:
        api = "on" if self.operator else "off (no PreheatConfig.secret)"
        return f"<PreheatAPI jobs {api} {self.book!r}>"

    @property
    def generation(self) -> int:
        return self.book.generation

    def secret_for(self, path: str, cluster: bytes) -> bytes:
        """The secret ``path`` is signed with; ``JobApiOffError`` for a job route
        when no operator credential is configured."""
        if not path.startswith(JOBS):
            return cluster
        if self.operator is None:
            raise JobApiOffError(
                "the preheat job API is off at this root: set PreheatConfig.secret or secretFile"
            )
        return self.operator

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post(JOBS, self.create),
            web.get(JOBS, self.list),
            web.get(JOBS + "/{id}", self.get),
            web.delete(JOBS + "/{id}", self.cancel),
            web.post(POLL, self.poll),
        ]

    async def background(self, _: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(supervised("the preheat sweep", self._sweep_loop))
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def shutdown(self, _: web.Application) -> None:
        """The server stops: held watches answer now, not when their wait ends."""
        self._closing = True
        self._wake()

    def _wake(self) -> None:
        """Every held watch asks the book again."""
        if self._moved is not None:
            self._moved.set()
            self._moved = None

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(SWEEP)
            self.book.sweep(time.time())
            self._account()

    def _account(self) -> None:
        if self.book.generation != self._seen_generation:
            self._seen_generation = self.book.generation
            self._wake()
        for event, job in self.book.take_events():
            self.metrics.inc(JOBS_METRIC, JOBS_HELP, result=event)
            if event != "created":
                log.info("preheat job %s (%s): %s %s", job.id, job.image, event, job.reason)
                size = sum(b.size for b in job.blobs) if event == "done" else -1
                self.audit.record(f"preheat:{event}", job.image, 0, size, time.time() - job.created)
        running = sum(1 for j in self.book.jobs.values() if j.state == "running")
        self.metrics.set_gauge(RUNNING_METRIC, RUNNING_HELP, float(running))

    @staticmethod
    def _json(state: msgspec.Struct, status: int = 200) -> web.Response:
        return web.Response(
            body=msgspec.json.encode(state), status=status, content_type="application/json"
        )

    # --- the job API -----------------------------------------------------------------

    async def create(self, request: web.Request) -> web.Response:
        spec = msgspec.json.decode(await request.read(), type=JobSpec)
        now = time.time()
        same = self.book.find(spec.key, spec.image)
        if same is not None:
            return self._json(same.wire())
        wanted, targets, names = self.book.plan(spec, now)
        try:
            split_image(spec.image)
        except ShoalError as exc:
            raise NameInvalidError(f"image {spec.image!r}: {exc.message}") from exc
        started = time.perf_counter()
        try:
            resolved = await resolve(self.upstream, spec.image, spec.credentials, spec.platform)
        except ShoalError as exc:
            self.metrics.inc(JOBS_METRIC, JOBS_HELP, result="refused")
            self.audit.record(PREHEAT_JOB, spec.image, 0, -1, time.perf_counter() - started)
            log.warning("preheat of %s refused: %s", spec.image, exc.message)
            raise
        ttl = min(spec.ttl or self.config.default_ttl, self.config.max_ttl)
        job = Job(
            self.book.new_id(), spec.image, resolved.host, resolved.name,
            resolved.authorization, resolved.manifest, resolved.blobs, now, now + ttl,
            spec.rate, spec.key, spec.origin, targets, wanted, names,
        )  # fmt: skip
        self.book.add(job)
        size = sum(b.size for b in job.blobs)
        self.audit.record(PREHEAT_JOB, spec.image, 0, size, time.perf_counter() - started)
        log.info(
            "preheat job %s: %s (%d blobs, %d bytes) to %s, TTL %.0f s%s",
            job.id, spec.image, len(job.blobs), size, targets, ttl,
            f", for {spec.origin}" if spec.origin else "",
        )  # fmt: skip
        self._account()
        return self._json(job.wire(), 201)

    async def list(self, _: web.Request) -> web.Response:
        return self._json(JobList([j.wire() for j in self.book.jobs.values()]))

    async def get(self, request: web.Request) -> web.Response:
        return self._json(self.book.get(request.match_info["id"]).wire())

    async def cancel(self, request: web.Request) -> web.Response:
        job = self.book.cancel(request.match_info["id"], time.time())
        self._account()
        state: JobState = job.wire()
        return self._json(state)

    # --- agents ----------------------------------------------------------------------

    async def _watch(self, req: PollRequest, answer: PollAnswer) -> PollAnswer:
        """Hold a watching poll until the book moves with something for this agent, or
        its wait ends; asked again on every move (its progress was taken at once)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(req.wait, MAX_WATCH)
        while not answer.work and not answer.cancelled and not self._closing:
            left = deadline - loop.time()
            if left <= 0:
                break
            if self._moved is None:
                self._moved = asyncio.Event()
            moved = self._moved
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await moved.wait()
            answer = self.book.poll(req, time.time())
        return answer

    async def poll(self, request: web.Request) -> web.Response:
        req = msgspec.json.decode(await request.read(), type=PollRequest)
        if self.config.check_source and peer_host(req.peer) != (request.remote or ""):
            raise AccessDeniedError(
                f"a poll for {req.peer} from {request.remote}: work goes only to the "
                "agent's own address (PreheatConfig.checkSource)"
            )
        answer = self.book.poll(req, time.time())
        if req.wait > 0 and not answer.work and not answer.cancelled:
            answer = await self._watch(msgspec.structs.replace(req, progress=[]), answer)
        if answer.work:
            log.info("preheat: %s gets %s", req.peer, ", ".join(w.job for w in answer.work))
        self._account()
        return self._json(answer)
