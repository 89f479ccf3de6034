"""The root's preheat jobs: which agents get which image, and how far each has come.

A job is an image resolved once (``preheat_resolve``: the manifest with the job's
credentials, so a refusal fails the job before any agent or root stores a byte) and a
rule for its nodes. Agents learn of work on their heartbeat (``Health.preheat`` changes
with every new, cancelled or expired job) and then poll (``poll``), signed with the
cluster secret; the answer holds the work for them, the poll their progress.

The rules, in order:

1. **Who is a target.** ``nodes``: an agent whose node name or advertised address is
   listed. ``count N``: the first N agents to poll while the job runs. ``percent P``:
   ``ceil(P% x agents seen in the last AGENT_MEMORY seconds)`` at creation, then as
   ``count``. None of them: every agent, also one that first polls later (a node the
   autoscaler adds before the rollout).
2. **Work is handed out once per agent** and again only when the agent no longer lists
   the job as held (it restarted).
3. **A job is done** when its wanted nodes are all done (every agent seen recently, for
   "all"); **failed** when every chosen node is final and one failed. Either stays
   queryable until its TTL ends, and ``RETAIN`` seconds more. A job for every agent that
   is done still hands its work to an agent that first polls later (and runs again
   until that one is done too), as long as its TTL lasts.
4. **Cancel** ends a job at once; agents holding it are told in their next poll and
   drop their reads and their hold on its blobs.
5. **Time is passed in** (``now``, Unix seconds): the book does no IO.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass, field
from typing import Literal

from shoal.config import PreheatConfig
from shoal.control.preheat import (
    FINAL,
    BlobRef,
    JobPhase,
    JobSpec,
    JobState,
    NodePhase,
    NodeProgress,
    PollAnswer,
    PollRequest,
    Work,
)
from shoal.errors import ShoalError, TooManyRequestsError

#: seconds an agent counts as present after its last poll (agents poll every 10 s idle)
AGENT_MEMORY = 60.0
#: seconds a job past its TTL is still answered for
RETAIN = 600.0


class JobUnknownError(ShoalError):
    http_status = 404
    oci_code = "NAME_UNKNOWN"


class JobInvalidError(ShoalError):
    http_status = 400
    oci_code = "BAD_REQUEST"


@dataclass(slots=True)
class _Node:
    peer: str
    node: str
    state: NodePhase = "pending"
    blobs_done: int = 0
    bytes_done: int = 0
    reason: str = ""
    started: float = 0.0
    finished: float = 0.0

    def wire(self) -> NodeProgress:
        return NodeProgress(
            self.peer, self.node, self.state, self.blobs_done, self.bytes_done,
            self.reason, self.started, self.finished,
        )  # fmt: skip


@dataclass(slots=True)
class Job:
    id: str
    image: str
    host: str
    name: str
    authorization: str
    manifest: str
    blobs: list[BlobRef]
    created: float
    expires: float
    rate: float
    key: str
    origin: str
    targets: str
    #: nodes wanted; -1: every agent
    wanted: int
    names: frozenset[str] = frozenset()
    state: JobPhase = "running"
    reason: str = ""
    chosen: dict[str, _Node] = field(default_factory=dict)
    #: the "done" event was counted once already
    counted: bool = False

    def __repr__(self) -> str:
        done = sum(1 for n in self.chosen.values() if n.state == "done")
        return f"<Job {self.id} {self.image} {self.state} [{done}/{len(self.chosen)} done]>"

    def wire(self) -> JobState:
        return JobState(
            self.id, self.image, self.state, self.reason, self.key, self.origin,
            self.created, self.expires, self.manifest, list(self.blobs), self.targets,
            self.wanted, self.rate, [n.wire() for n in self.chosen.values()],
        )  # fmt: skip

    def targets_peer(self, peer: str, node: str) -> bool:
        if self.names:
            return node in self.names or peer_host(peer) in self.names
        return self.wanted < 0 or len(self.chosen) < self.wanted


def peer_host(peer: str) -> str:
    """The address part of ``host:port`` (``[v6]:port`` without brackets)."""
    return peer.rpartition(":")[0].strip("[]")


Ended = Literal["done", "failed", "cancelled", "expired"]
Event = Literal["created", "done", "failed", "cancelled", "expired"]


class PreheatBook:
    def __init__(self, config: PreheatConfig) -> None:
        self.config = config
        self.jobs: dict[str, Job] = {}
        #: peer -> (node name, last poll)
        self.agents: dict[str, tuple[str, float]] = {}
        #: changes whenever a job is added or ends early: agents then poll
        self.generation = 0
        #: what happened to jobs since the last ``take_events`` (metrics, audit)
        self.events: list[tuple[Event, Job]] = []

    def __repr__(self) -> str:
        live = sum(1 for j in self.jobs.values() if j.state not in FINAL)
        return f"<PreheatBook [{live} running, {len(self.jobs)} held | {len(self.agents)} agents]>"

    # --- jobs ------------------------------------------------------------------------

    def find(self, key: str, image: str) -> Job | None:
        """A live job a caller asked for before under ``key``."""
        if not key:
            return None
        for job in self.jobs.values():
            if job.key == key and job.image == image and job.state not in FINAL:
                return job
        return None

    def plan(self, spec: JobSpec, now: float) -> tuple[int, str, frozenset[str]]:
        """(wanted, targets in words, names) of a new job; ``JobInvalidError`` if the
        spec says two things at once or nothing sensible."""
        chosen = sum(bool(x) for x in (spec.nodes, spec.count, spec.percent))
        if chosen > 1:
            raise JobInvalidError("give nodes, count or percent: one of them, or none for all")
        if spec.count < 0 or not 0 <= spec.percent <= 100:
            raise JobInvalidError("count must be positive, percent between 0 and 100")
        if spec.ttl < 0 or spec.rate < 0:
            raise JobInvalidError("ttl and rate must not be negative")
        if spec.nodes:
            names = frozenset(n.strip() for n in spec.nodes if n.strip())
            return len(names), f"nodes {', '.join(sorted(names))}", names
        if spec.count:
            return spec.count, f"{spec.count} agents", frozenset()
        if spec.percent:
            present = self.present(now)
            if not present:
                raise JobInvalidError(
                    "no agent has polled this root yet (they do every few seconds): "
                    "a percentage of nothing; try again, or give --count"
                )
            wanted = max(1, math.ceil(spec.percent / 100 * len(present)))
            return wanted, f"{wanted} of {len(present)} agents ({spec.percent:g}%)", frozenset()
        return -1, "all agents", frozenset()

    def add(self, job: Job) -> Job:
        live = sum(1 for j in self.jobs.values() if j.state not in FINAL)
        if live >= self.config.max_jobs:
            raise TooManyRequestsError(
                f"{live} preheat jobs running here (PreheatConfig.maxJobs); cancel one"
            )
        self.jobs[job.id] = job
        self.generation += 1
        self.events.append(("created", job))
        return job

    @staticmethod
    def new_id() -> str:
        return secrets.token_hex(6)

    def get(self, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job is None:
            raise JobUnknownError(f"no preheat job {job_id} at this root")
        return job

    def cancel(self, job_id: str, now: float) -> Job:
        job = self.get(job_id)
        if job.state not in FINAL:
            self._end(job, "cancelled", "cancelled by a caller", now)
        return job

    def _end(self, job: Job, state: Ended, reason: str, now: float) -> None:
        job.state = state
        job.reason = reason
        if state in ("cancelled", "expired"):
            self.generation += 1
        if state == "done":
            if job.counted:
                return
            job.counted = True
        self.events.append((state, job))

    def take_events(self) -> list[tuple[Event, Job]]:
        events, self.events = self.events, []
        return events

    def sweep(self, now: float) -> None:
        """Expire what outlived its TTL; forget what outlived it by ``RETAIN``."""
        for job in list(self.jobs.values()):
            if now >= job.expires and job.state not in FINAL:
                self._end(job, "expired", "its TTL ended before every node was done", now)
            if now >= job.expires + RETAIN:
                del self.jobs[job.id]
        horizon = now - AGENT_MEMORY
        for peer, (_, last) in list(self.agents.items()):
            if last < horizon:
                del self.agents[peer]

    def present(self, now: float) -> list[str]:
        horizon = now - AGENT_MEMORY
        return [peer for peer, (_, last) in self.agents.items() if last >= horizon]

    # --- agents ----------------------------------------------------------------------

    def poll(self, req: PollRequest, now: float) -> PollAnswer:
        self.agents[req.peer] = (req.node, now)
        for p in req.progress:
            job = self.jobs.get(p.job)
            node = None if job is None else job.chosen.get(req.peer)
            if job is None or node is None or node.state in ("done", "failed"):
                continue
            node.state, node.blobs_done, node.bytes_done = p.state, p.blobs_done, p.bytes_done
            node.reason = p.reason[:300]
            if p.state in ("done", "failed"):
                node.finished = now
            self._settle(job, now)
        held = set(req.held)
        work: list[Work] = []
        for job in self.jobs.values():
            reopen = job.state == "done" and job.wanted < 0 and req.peer not in job.chosen
            if job.state in FINAL and not reopen:
                continue
            node = job.chosen.get(req.peer)
            if node is None:
                if not job.targets_peer(req.peer, req.node):
                    continue
                node = job.chosen[req.peer] = _Node(req.peer, req.node, started=now)
                if reopen:
                    job.state = "running"
            elif job.id in held or node.state in ("done", "failed"):
                continue
            work.append(
                Work(
                    job.id, job.host, job.name, job.authorization, list(job.blobs),
                    ttl=max(job.expires - now, 0.0), rate=job.rate,
                )
            )  # fmt: skip
        cancelled = [
            j for j in sorted(held) if j in self.jobs and self.jobs[j].state == "cancelled"
        ]
        return PollAnswer(work, cancelled, self.generation)

    def _settle(self, job: Job, now: float) -> None:
        """Rule 3: done or failed, once every wanted node is final."""
        if job.state in FINAL:
            return
        nodes = list(job.chosen.values())
        if job.wanted >= 0:
            if len(nodes) < job.wanted:
                return
        else:
            present = set(self.present(now))
            if not present <= set(job.chosen):
                return
        if not nodes or any(n.state not in ("done", "failed") for n in nodes):
            return
        failed = [n for n in nodes if n.state == "failed"]
        if failed:
            first = failed[0]
            self._end(
                job, "failed", f"{len(failed)} node(s) failed; {first.peer}: {first.reason}", now
            )
        else:
            self._end(job, "done", "", now)
