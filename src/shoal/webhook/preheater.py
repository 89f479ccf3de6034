"""The workload preheater: a workload's images on its nodes whenever its images change.

Every ``resyncPeriod`` seconds it lists nodes, namespaces, Deployments, StatefulSets
and DaemonSets, and asks ``workloads.want`` what each opted-in workload needs. A
workload seen for the first time, or whose template's images changed since its last
preheat, gets one job per image at the roots, for the InternalIPs of the nodes its Pod
template can schedule to, with the credentials of its ``imagePullSecrets`` (read as
kubelet reads them). The job's key is the workload, so a root answers the live job
instead of starting another when two webhook replicas ask at once.

Progress is told as Events on the workload (``kubectl describe`` shows them):
``PreheatStarted`` with the job ids and node count, then ``PreheatDone`` or
``PreheatFailed`` with nodes done and the first reason; ``PreheatSkipped`` when no node
fits or a job was refused (credentials that do not grant access, a bad reference). A
refusal is not retried until the images change again: an Event per resync would be
noise, and the rollout still pulls as it would without shoal.

Listing instead of watching keeps this small; a changed template is seen within one
period, and a rollout's Pods are started over a longer time than that on all but the
smallest workloads. The memory of what was preheated is soft: after a restart every
opted-in workload is preheated once more, which costs the nodes that already have the
image only an access check per blob.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

from shoal.control.preheat import FINAL, Credentials, JobSpec, JobState
from shoal.control.preheat_client import PreheatClient
from shoal.control.preheat_creds import credentials_for
from shoal.errors import ShoalError
from shoal.oci.reference import split_image
from shoal.webhook.config import PreheatConfig
from shoal.webhook.kube import KubeApiError, KubeClient
from shoal.webhook.workloads import KINDS, Want, event, want

log = logging.getLogger("shoal.webhook.preheat")


@dataclass(slots=True)
class Followed:
    want: Want
    uid: str
    jobs: dict[str, JobState] = field(default_factory=dict)


class WorkloadPreheater:
    """Owns its loop; the composition root enters it with ``async with``."""

    def __init__(self, kube: KubeClient, client: PreheatClient, cfg: PreheatConfig) -> None:
        self.kube = kube
        self.client = client
        self.cfg = cfg
        #: workload key -> fingerprint of the images last preheated (or refused)
        self.seen: dict[str, str] = {}
        #: workload key -> the jobs being followed
        self.following: dict[str, Followed] = {}
        #: reason -> Events written (for ``repr`` and tests)
        self.events: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return (
            f"<WorkloadPreheater [{len(self.seen)} workloads, "
            f"{len(self.following)} following | events {self.events}]>"
        )

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self._loop(), name="preheat-workloads")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        while True:
            try:
                await self.reconcile()
            except (KubeApiError, ShoalError) as exc:
                log.warning("preheat: resync failed, next in %.0f s: %s",
                            self.cfg.resync_period, exc.message)  # fmt: skip
            await asyncio.sleep(self.cfg.resync_period)

    async def reconcile(self) -> None:
        """One pass: start what changed, report what ended."""
        nodes = await self.kube.list_objects("/api/v1/nodes")
        namespaces = {
            str((n.get("metadata") or {}).get("name")): n
            for n in await self.kube.list_objects("/api/v1/namespaces")
        }
        live: set[str] = set()
        for kind, path in KINDS.items():
            for obj in await self.kube.list_objects(path):
                obj_ns = str((obj.get("metadata") or {}).get("namespace", ""))
                w = want(kind, obj, namespaces.get(obj_ns), nodes)
                if w is None:
                    continue
                live.add(w.key)
                if self.seen.get(w.key) != w.fingerprint:
                    self.seen[w.key] = w.fingerprint
                    await self._start(w, str((obj.get("metadata") or {}).get("uid", "")))
        for key in set(self.seen) - live:  # opted out or deleted: a later opt-in starts again
            del self.seen[key]
        await self._follow()

    async def _credentials(self, w: Want, host: str) -> Credentials:
        for name in w.pull_secrets:
            secret = await self.kube.get_secret(w.namespace, name)
            if secret is None:
                continue
            try:
                creds = credentials_for(secret, host)
            except ShoalError as exc:
                log.warning("preheat %s: pull secret %s: %s", w.origin, name, exc.message)
                continue
            if creds is not None:
                return creds
        return Credentials()

    async def _start(self, w: Want, uid: str) -> None:
        if not w.nodes:
            await self._event(w, uid, "PreheatSkipped", "no node fits the Pod template", "Warning")
            return
        followed = Followed(w, uid)
        refused: list[str] = []
        for image in w.images:
            try:
                creds = await self._credentials(w, split_image(image)[0])
                spec = JobSpec(
                    image, credentials=creds, nodes=list(w.nodes), ttl=self.cfg.ttl,
                    rate=self.cfg.rate, key=w.key, origin=w.origin,
                )  # fmt: skip
                state = await self.client.create(spec)
            except ShoalError as exc:
                refused.append(f"{image}: {exc.message}")
                continue
            followed.jobs[state.id] = state
        if followed.jobs:
            self.following[w.key] = followed
            jobs = ", ".join(followed.jobs)
            await self._event(
                w, uid, "PreheatStarted",
                f"preheating {len(followed.jobs)} image(s) on {len(w.nodes)} node(s): job {jobs}",
            )  # fmt: skip
        if refused:
            await self._event(w, uid, "PreheatSkipped", "; ".join(refused), "Warning")

    async def _follow(self) -> None:
        for key, followed in list(self.following.items()):
            for job_id, old in list(followed.jobs.items()):
                if old.state in FINAL:
                    continue
                try:
                    followed.jobs[job_id] = await self.client.get(job_id)
                except ShoalError as exc:  # the root forgot it (restarted): say so, once
                    followed.jobs[job_id] = JobState(job_id, old.image, "failed", exc.message)
            states = list(followed.jobs.values())
            if any(s.state not in FINAL for s in states):
                continue
            del self.following[key]
            w = followed.want
            done = min(s.count("done") for s in states)
            bad = [s for s in states if s.state != "done"]
            if not bad:
                await self._event(
                    w, followed.uid, "PreheatDone",
                    f"{len(states)} image(s) on {done}/{len(w.nodes)} node(s)",
                )  # fmt: skip
            else:
                first = bad[0]
                await self._event(
                    w, followed.uid, "PreheatFailed",
                    f"job {first.id} {first.state}: {first.reason}; "
                    f"{done}/{len(w.nodes)} node(s) have every image", "Warning",
                )  # fmt: skip

    async def _event(
        self, w: Want, uid: str, reason: str, message: str, kind: str = "Normal"
    ) -> None:
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body: dict[str, Any] = event(w, uid, reason, message, kind, now)
        self.events[reason] = self.events.get(reason, 0) + 1
        log.info("preheat %s: %s: %s", w.origin, reason, message)
        try:
            await self.kube.create_event(w.namespace, body)
        except KubeApiError as exc:
            log.warning("preheat %s: cannot write the Event: %s", w.origin, exc.message)
