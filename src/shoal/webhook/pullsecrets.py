"""Pull-secret clones, decided without IO: source Secret + existing clone -> one action.

kubelet picks registry credentials by the host in the image reference. After the
rewrite that host is ``<a>.distributed.<b>:65001``, for which the original pull secret
has no entry, so every original ``S`` gets a clone ``acr-credential-S-p2p`` whose
``auths`` keys are the distributed endpoints and whose values are the original entries
unchanged (the agent passes them on to the real registry, which checks them).

The clone carries an owner reference to its source (deleting ``S`` deletes the clone
through the garbage collector), the label ``app.kubernetes.io/managed-by: shoal`` (so
the controller can list what it owns) and the source's ``resourceVersion`` (so a change
of ``S`` is seen without comparing secrets byte by byte on every event). A Secret of the
clone's name that shoal did not make is never touched.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any, Literal

from shoal.webhook.config import AccelerateConfig
from shoal.webhook.images import HostPatterns, distributed_endpoint, registry_of_auth_key
from shoal.webhook.types import OwnerReference, Secret

DOCKERCONFIGJSON = "kubernetes.io/dockerconfigjson"
DOCKERCFG = "kubernetes.io/dockercfg"
MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "shoal"
CLONE_OF = "shoal.io/clone-of"
SOURCE_VERSION = "shoal.io/source-resource-version"


@dataclass(frozen=True, slots=True)
class Plan:
    """One step towards the desired clone; ``body`` is what to send for create/update."""

    action: Literal["create", "update", "delete", "none"]
    namespace: str
    name: str
    body: Secret | None = None
    reason: str = ""


def source_auths(source: Secret) -> dict[str, Any] | None:
    """The ``auths`` of a docker config Secret, or ``None`` if it is not one."""
    data = source.get("data") or {}
    kind = source.get("type")
    key = ".dockerconfigjson" if kind == DOCKERCONFIGJSON else ".dockercfg"
    if kind not in (DOCKERCONFIGJSON, DOCKERCFG) or key not in data:
        return None
    try:
        doc = json.loads(base64.b64decode(data[key], validate=True))
    except (binascii.Error, ValueError):
        return None
    if not isinstance(doc, dict):
        return None
    auths = doc.get("auths") if kind == DOCKERCONFIGJSON else doc
    return auths if isinstance(auths, dict) else None


def desired_clone(source: Secret, cfg: AccelerateConfig) -> Secret | None:
    """The clone ``source`` should have, or ``None`` if it names no accelerated registry."""
    auths = source_auths(source)
    meta = source.get("metadata") or {}
    name, namespace, uid = meta.get("name"), meta.get("namespace"), meta.get("uid")
    if auths is None or not name or not namespace or not uid:
        return None
    patterns = HostPatterns.of(cfg.registries)
    cloned: dict[str, Any] = {}
    for key in sorted(auths):
        host = registry_of_auth_key(key)
        if host is None or not patterns.match(host):
            continue
        endpoint = distributed_endpoint(host, cfg.p2p_port)
        if endpoint is not None and endpoint not in cloned:
            cloned[endpoint] = auths[key]
    if not cloned:
        return None
    payload = json.dumps({"auths": cloned}, sort_keys=True, separators=(",", ":"))
    owner: OwnerReference = {
        "apiVersion": "v1",
        "kind": "Secret",
        "name": name,
        "uid": uid,
        "blockOwnerDeletion": False,
    }
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": cfg.clone_name(name),
            "namespace": namespace,
            "labels": {MANAGED_BY: MANAGER, CLONE_OF: _label_value(name)},
            "annotations": {SOURCE_VERSION: meta.get("resourceVersion", "")},
            "ownerReferences": [owner],
        },
        "type": DOCKERCONFIGJSON,
        "data": {".dockerconfigjson": base64.b64encode(payload.encode()).decode("ascii")},
    }


def is_managed(secret: Secret) -> bool:
    return (secret.get("metadata", {}).get("labels") or {}).get(MANAGED_BY) == MANAGER


def plan(
    namespace: str,
    source_name: str,
    source: Secret | None,
    existing: Secret | None,
    cfg: AccelerateConfig,
) -> Plan:
    """What to do so the clone of ``namespace/source_name`` matches its source."""
    clone_name = cfg.clone_name(source_name)
    if existing is not None and not is_managed(existing):
        return Plan("none", namespace, clone_name, reason="a Secret of that name not made by shoal")
    if source is None:
        # the garbage collector removes clones whose owner is gone
        return Plan("none", namespace, clone_name, reason="source does not exist")
    desired = desired_clone(source, cfg)
    if desired is None:
        if existing is not None:
            return Plan(
                "delete", namespace, clone_name, reason="source names no accelerated registry"
            )
        return Plan("none", namespace, clone_name, reason="source names no accelerated registry")
    if existing is None:
        return Plan("create", namespace, clone_name, body=desired, reason="missing")
    if _same(existing, desired):
        return Plan("none", namespace, clone_name, reason="up to date")
    body: Secret = {**desired, "metadata": {**desired["metadata"]}}
    rv = existing.get("metadata", {}).get("resourceVersion")
    if rv:
        body["metadata"]["resourceVersion"] = rv
    return Plan("update", namespace, clone_name, body=body, reason="source changed")


def _same(existing: Secret, desired: Secret) -> bool:
    em, dm = existing.get("metadata", {}), desired.get("metadata", {})
    return (
        existing.get("type") == desired.get("type")
        and existing.get("data") == desired.get("data")
        and [o.get("uid") for o in em.get("ownerReferences") or []]
        == [o.get("uid") for o in dm.get("ownerReferences") or []]
        and (em.get("annotations") or {}).get(SOURCE_VERSION)
        == (dm.get("annotations") or {}).get(SOURCE_VERSION)
    )


def _label_value(name: str) -> str:
    """Label values are at most 63 characters; Secret names may be longer."""
    return name if len(name) <= 63 else name[:63].rstrip("-._")
