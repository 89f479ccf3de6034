"""RBAC as the API server applies it, for the rendered ClusterRoles, Roles and bindings.

The stand-in API server (``apiserver.py``) asks ``Authorizer.allows`` about each call
of a service account when the cluster runs with ``rbac=True``, and answers ``403`` when
no rule of a role bound to it grants the call, so a rule missing from the chart fails
the program that needs it, as it would in a cluster. What a request is (verb, API
group, resource, namespace, name) is read from its path as the API server's request
info resolver does (``k8s.io/apiserver/pkg/endpoints/request/requestinfo.go``):
``GET`` of a collection is ``list`` (``watch`` with ``?watch=1``), of an object ``get``;
``POST`` ``create``, ``PUT`` ``update``, ``PATCH`` ``patch``, ``DELETE`` ``delete``.
A rule with ``resourceNames`` grants only requests that name one of them (never a
``list`` or a ``create``). Only what shoal's roles use: no aggregation, no
``nonResourceURLs``, no subresources.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

Doc = dict[str, Any]
RBAC_KINDS = {"ClusterRole", "Role", "ClusterRoleBinding", "RoleBinding"}
VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


@dataclass(frozen=True, slots=True)
class Request:
    verb: str
    group: str
    resource: str
    namespace: str
    name: str


def request_info(method: str, path: str, query: Mapping[str, str]) -> Request:
    """``GET /apis/apps/v1/deployments`` -> list apps/deployments, every namespace."""
    parts = [p for p in path.split("/") if p]
    if parts[:2] == ["api", "v1"]:
        group, rest = "", parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 3:
        group, rest = parts[1], parts[3:]
    else:
        raise ValueError(f"not a resource path: {path}")
    namespace = ""
    if len(rest) >= 3 and rest[0] == "namespaces":
        namespace, rest = rest[1], rest[2:]
    if not rest:
        raise ValueError(f"no resource in {path}")
    resource, name = rest[0], rest[1] if len(rest) > 1 else ""
    if resource == "namespaces" and name:  # a namespace itself, not a resource in it
        namespace = name
    if method == "GET":
        verb = "get" if name else ("watch" if query.get("watch") in ("1", "true") else "list")
    else:
        verb = VERBS[method]
    return Request(verb, group, resource, namespace, name)


def _grants(rule: Doc, req: Request) -> bool:
    def has(key: str, value: str) -> bool:
        values = rule.get(key) or []
        return "*" in values or value in values

    if not (has("apiGroups", req.group) and has("resources", req.resource)):
        return False
    if not has("verbs", req.verb):
        return False
    names = rule.get("resourceNames")
    return not names or (bool(req.name) and req.name in names)


class Authorizer:
    """The rendered RBAC objects (hooks' included) and who they bind."""

    def __init__(self, docs: Iterable[Doc]) -> None:
        self.roles: dict[tuple[str, str, str], list[Doc]] = {}
        self.bindings: list[Doc] = []
        for doc in docs:
            kind = doc.get("kind")
            if kind not in RBAC_KINDS:
                continue
            meta = doc["metadata"]
            if kind in ("ClusterRole", "Role"):
                ns = meta.get("namespace", "") if kind == "Role" else ""
                self.roles[(kind, ns, meta["name"])] = list(doc.get("rules") or [])
            else:
                self.bindings.append(doc)

    def __repr__(self) -> str:
        return f"<Authorizer {len(self.roles)} roles, {len(self.bindings)} bindings>"

    def allows(self, who: str, req: Request) -> bool:
        """``who`` is ``namespace:serviceaccount``, as the API server's tokens say."""
        sa_ns, _, sa = who.partition(":")
        for b in self.bindings:
            subjects = b.get("subjects") or []
            if not any(
                s.get("kind") == "ServiceAccount"
                and s.get("name") == sa
                and s.get("namespace") == sa_ns
                for s in subjects
            ):
                continue
            ref = b["roleRef"]
            scope = b["metadata"].get("namespace", "") if b["kind"] == "RoleBinding" else ""
            if scope and req.namespace != scope:
                continue  # a RoleBinding grants only in its own namespace
            role_ns = scope if ref["kind"] == "Role" else ""
            for rule in self.roles.get((ref["kind"], role_ns, ref["name"]), []):
                if _grants(rule, req):
                    return True
        return False
