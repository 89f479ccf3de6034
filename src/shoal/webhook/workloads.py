"""Where a workload's Pods can land, and what to preheat there: decided without IO.

A Deployment, StatefulSet or DaemonSet (or its namespace) carrying the label or the
annotation ``shoal.io/preheat: "true"`` asks for its images on the nodes its Pod
template can schedule to, before its Pods are started there. shoal's own name, since
the reference surface has none; ``"false"`` on the workload opts it out of its
namespace's choice.

Which nodes, by the rules the scheduler's filters apply to the template (no scoring,
no resources: a preheat on a node that turns out full costs only disk):

1. ``spec.unschedulable`` nodes are out (a DaemonSet's Pods tolerate it, as the
   DaemonSet controller adds that toleration);
2. every ``nodeSelector`` pair must be a label of the node;
3. ``requiredDuringSchedulingIgnoredDuringExecution`` node affinity: one of the
   ``nodeSelectorTerms`` must match (a term: all its ``matchExpressions`` on labels
   and ``matchFields`` on ``metadata.name``; an empty term matches nothing);
4. every taint with effect ``NoSchedule`` or ``NoExecute`` must be tolerated by one of
   the template's tolerations (``Exists`` with an empty key tolerates every taint; an
   empty effect tolerates every effect). ``PreferNoSchedule`` never keeps a Pod off.

A node is named to the roots by its ``InternalIP``, which is the address its agent
advertises (the chart passes ``status.hostIP``), so no agent config must name nodes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

#: the label or annotation that asks for preheat (on a workload or its namespace)
PREHEAT_KEY = "shoal.io/preheat"
#: the kinds the controller looks at, with their API paths
KINDS = {
    "Deployment": "/apis/apps/v1/deployments",
    "StatefulSet": "/apis/apps/v1/statefulsets",
    "DaemonSet": "/apis/apps/v1/daemonsets",
}
#: taint effects that keep a Pod off a node
BLOCKING = frozenset({"NoSchedule", "NoExecute"})
UNSCHEDULABLE_TAINT = "node.kubernetes.io/unschedulable"

Obj = dict[str, Any]


def _flag(meta: Obj) -> bool | None:
    """The object's own say: True, False or None (says nothing)."""
    for where in ("labels", "annotations"):
        value = (meta.get(where) or {}).get(PREHEAT_KEY)
        if isinstance(value, str):
            return value.strip().lower() in ("true", "1", "yes", "on")
    return None


def wants_preheat(workload: Obj, namespace: Obj | None) -> bool:
    own = _flag(workload.get("metadata") or {})
    if own is not None:
        return own
    return bool(namespace is not None and _flag(namespace.get("metadata") or {}))


def pod_spec(workload: Obj) -> Obj:
    return ((workload.get("spec") or {}).get("template") or {}).get("spec") or {}


def images_of(spec: Obj) -> tuple[str, ...]:
    """The template's images (init containers and containers), each once, in order."""
    seen: dict[str, None] = {}
    for group in ("initContainers", "containers"):
        for c in spec.get(group) or []:
            image = c.get("image") if isinstance(c, dict) else None
            if isinstance(image, str) and image:
                seen.setdefault(image, None)
    return tuple(seen)


def _expression(expr: Obj, value: str | None) -> bool:
    op = expr.get("operator")
    values = [str(v) for v in expr.get("values") or []]
    if op == "In":
        return value is not None and value in values
    if op == "NotIn":
        return value is None or value not in values
    if op == "Exists":
        return value is not None
    if op == "DoesNotExist":
        return value is None
    if op in ("Gt", "Lt") and value is not None and len(values) == 1:
        try:
            have, want = int(value), int(values[0])
        except ValueError:
            return False
        return have > want if op == "Gt" else have < want
    return False


def _term(term: Obj, labels: dict[str, str], name: str) -> bool:
    exprs = term.get("matchExpressions") or []
    fields = term.get("matchFields") or []
    if not exprs and not fields:
        return False
    for e in exprs:
        if not _expression(e, labels.get(str(e.get("key")))):
            return False
    for f in fields:
        value = name if f.get("key") == "metadata.name" else None
        if not _expression(f, value):
            return False
    return True


def _tolerated(taint: Obj, tolerations: list[Obj]) -> bool:
    for t in tolerations:
        if t.get("effect") and t.get("effect") != taint.get("effect"):
            continue
        op = t.get("operator") or "Equal"
        key = t.get("key") or ""
        if op == "Exists" and (not key or key == taint.get("key")):
            return True
        if (
            op == "Equal"
            and key == taint.get("key")
            and (t.get("value") or "") == (taint.get("value") or "")
        ):
            return True
    return False


def fits(spec: Obj, node: Obj, *, daemon: bool = False) -> bool:
    """Rules 1-4 of the module docstring: may a Pod of ``spec`` be scheduled to ``node``."""
    meta = node.get("metadata") or {}
    labels: dict[str, str] = meta.get("labels") or {}
    name = str(meta.get("name", ""))
    node_spec = node.get("spec") or {}
    tolerations = [t for t in spec.get("tolerations") or [] if isinstance(t, dict)]
    if daemon:
        tolerations = [*tolerations, {"key": UNSCHEDULABLE_TAINT, "operator": "Exists"}]
    if node_spec.get("unschedulable") and not daemon:
        return False
    for key, value in (spec.get("nodeSelector") or {}).items():
        if labels.get(key) != value:
            return False
    required = ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    ) or None
    if required is not None:
        terms = required.get("nodeSelectorTerms") or []
        if not any(_term(t, labels, name) for t in terms):
            return False
    for taint in node_spec.get("taints") or []:
        if taint.get("effect") in BLOCKING and not _tolerated(taint, tolerations):
            return False
    return True


def node_address(node: Obj) -> str | None:
    """The node's InternalIP (the address its agent advertises); None without one."""
    for addr in (node.get("status") or {}).get("addresses") or []:
        if addr.get("type") == "InternalIP" and addr.get("address"):
            return str(addr["address"])
    return None


@dataclass(frozen=True, slots=True)
class Want:
    """One workload's preheat: its images on its nodes."""

    kind: str
    namespace: str
    name: str
    images: tuple[str, ...]
    #: node InternalIPs, sorted
    nodes: tuple[str, ...]
    pull_secrets: tuple[str, ...]

    @property
    def key(self) -> str:
        """The job key at the roots (one live job per key and image)."""
        return f"{self.kind}/{self.namespace}/{self.name}"

    @property
    def origin(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"

    @property
    def fingerprint(self) -> str:
        """Changes when the template's images change (the nodes do not count: a node
        added later is no reason to fetch again on every other node)."""
        return hashlib.sha256("\n".join(self.images).encode()).hexdigest()[:16]


def want(kind: str, workload: Obj, namespace: Obj | None, nodes: list[Obj]) -> Want | None:
    """What ``workload`` asks for, or None when it asks for no preheat."""
    if not wants_preheat(workload, namespace):
        return None
    spec = pod_spec(workload)
    images = images_of(spec)
    meta = workload.get("metadata") or {}
    if not images or not meta.get("name") or not meta.get("namespace"):
        return None
    daemon = kind == "DaemonSet"
    chosen = sorted(
        {addr for n in nodes if fits(spec, n, daemon=daemon) and (addr := node_address(n))}
    )
    refs = [s for s in spec.get("imagePullSecrets") or [] if isinstance(s, dict)]
    secrets = tuple(str(s["name"]) for s in refs if s.get("name"))
    return Want(kind, str(meta["namespace"]), str(meta["name"]), images, tuple(chosen), secrets)


def event(want: Want, uid: str, reason: str, message: str, kind: str, now: str) -> Obj:
    """A core/v1 Event on the workload (``kubectl describe`` shows it)."""
    digest = hashlib.sha256(f"{want.key}{reason}{message}{now}".encode()).hexdigest()[:10]
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{want.name}.shoal-preheat.{digest}", "namespace": want.namespace},
        "involvedObject": {
            "apiVersion": "apps/v1",
            "kind": want.kind,
            "name": want.name,
            "namespace": want.namespace,
            "uid": uid,
        },
        "reason": reason,
        "message": message[:1000],
        "type": kind,
        "source": {"component": "shoal-preheat"},
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
        "reportingComponent": "shoal.io/preheat",
        "reportingInstance": "shoal-webhook",
    }
