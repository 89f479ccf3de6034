"""Bodies of the preheat API (``/preheat/v1/...`` on a root), as msgspec structs.

Two callers, two credentials. Operators and the webhook's controller create, list and
cancel jobs (``JobSpec`` in, ``JobState`` out), signed with the operator credential
(``PreheatConfig.secret``). Agents ask for their work (``PollRequest`` in, ``PollAnswer``
out), signed with the cluster secret like every other agent call, and report progress
in the same call. A job's registry credentials travel only in ``Work``, to the agents
the job targets, over the control API's TLS.
"""

from __future__ import annotations

from typing import Literal

import msgspec

JobPhase = Literal["resolving", "running", "done", "failed", "cancelled", "expired"]
NodePhase = Literal["pending", "running", "done", "failed"]
#: job phases after which nothing changes any more
FINAL: frozenset[str] = frozenset({"done", "failed", "cancelled", "expired"})


class Credentials(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What reads the image: a user and password (a pull secret's entry), or a ready
    ``Authorization`` header value. The root turns a user and password into the header
    the registry wants (``Basic``, or a ``Bearer`` token from the registry's realm)."""

    username: str = ""
    password: str = ""
    authorization: str = ""

    def __repr__(self) -> str:  # never in a log line
        who = self.username or ("header" if self.authorization else "anonymous")
        return f"<Credentials {who}>"


class JobSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A job: put ``image`` on the nodes named, on ``count`` or ``percent`` of the agents,
    or (none of the three) on every agent."""

    image: str
    credentials: Credentials = Credentials()
    #: node names or node IPs (the address an agent advertises)
    nodes: list[str] = msgspec.field(default_factory=list)
    count: int = 0
    percent: float = 0.0
    #: seconds the blobs stay kept on the nodes after the job starts; 0: the root's default
    ttl: float = 0.0
    #: MB/s of piece fetches per node for this job; 0: the nodes' own cap
    rate: float = 0.0
    #: ``os/arch`` picked from an index
    platform: str = "linux/amd64"
    #: a caller's name for what it wants; a live job with the same key and image is
    #: answered instead of starting another (the controller asks on every change)
    key: str = ""
    #: who asked, for people reading the state ("Deployment apps/web")
    origin: str = ""


class BlobRef(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    digest: str
    size: int


class NodeProgress(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    #: the agent's peer id (``address:port``)
    peer: str
    #: the node's name as the agent knows it
    node: str = ""
    state: NodePhase = "pending"
    blobs_done: int = 0
    bytes_done: int = 0
    #: why it failed, in words
    reason: str = ""
    #: root's clock (Unix seconds): work handed out, and the node done or failed
    started: float = 0.0
    finished: float = 0.0


class JobState(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    id: str
    image: str
    state: JobPhase
    reason: str = ""
    key: str = ""
    origin: str = ""
    #: Unix seconds, the root's clock
    created: float = 0.0
    expires: float = 0.0
    #: the image manifest the reference resolved to
    manifest: str = ""
    blobs: list[BlobRef] = msgspec.field(default_factory=list)
    #: how the nodes were chosen, in words ("all agents", "4 of 8 agents (50%)")
    targets: str = ""
    #: nodes the job is for; -1: every agent, also those that appear later
    wanted: int = -1
    rate: float = 0.0
    nodes: list[NodeProgress] = msgspec.field(default_factory=list)

    @property
    def bytes_total(self) -> int:
        return sum(b.size for b in self.blobs)

    def count(self, state: str) -> int:
        return sum(1 for n in self.nodes if n.state == state)


class JobList(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    jobs: list[JobState]


class Progress(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One job on one node, as the agent sees it."""

    job: str
    state: NodePhase
    blobs_done: int = 0
    bytes_done: int = 0
    reason: str = ""


class PollRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    peer: str
    node: str = ""
    progress: list[Progress] = msgspec.field(default_factory=list)
    #: jobs this agent has (working on or keeping): their work is not sent again
    held: list[str] = msgspec.field(default_factory=list)
    #: > 0: a watch. With no work or cancellation for this agent yet, the root holds the
    #: answer until there is (a job is created or ends early) or this many seconds pass
    #: (at most ``root.preheat_api.MAX_WATCH``), so new work needs no heartbeat to arrive
    wait: float = 0.0


class Work(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What one agent is to fetch for a job, exactly as a pull of it would."""

    job: str
    host: str
    name: str
    authorization: str
    blobs: list[BlobRef]
    #: seconds from now the blobs stay kept
    ttl: float
    #: MB/s cap of this job's piece fetches; 0: none of its own
    rate: float = 0.0

    def __repr__(self) -> str:  # the authorization stays out of logs
        return f"<Work {self.job} {self.host}/{self.name} [{len(self.blobs)} blobs]>"


class PollAnswer(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    work: list[Work] = msgspec.field(default_factory=list)
    #: held jobs that ended early (cancelled): stop, and keep their blobs no longer
    cancelled: list[str] = msgspec.field(default_factory=list)
    #: the root's job counter when it answered (the heartbeat's ``Health.preheat``)
    generation: int = 0
