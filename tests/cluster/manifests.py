"""The chart as rendered by ``helm template``, and the few API-server rules applied to it.

Only what the cluster needs to act like one: objects by kind and name, hooks by phase
and weight, label selectors (``matchLabels`` and ``matchExpressions``, as the API
server evaluates a webhook's ``objectSelector`` and ``namespaceSelector``), and a
Service's route to a Pod's port.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "shoal"

Doc = dict[str, Any]


class RenderError(Exception):
    pass


def helm() -> str:
    found = os.environ.get("SHOAL_HELM") or shutil.which("helm")
    if not found:
        raise RenderError("helm is not installed (bash scripts/install-helm.sh)")
    return found


@dataclass
class Rendered:
    release: str
    namespace: str
    docs: list[Doc]
    text: str

    def by_kind(self, kind: str) -> list[Doc]:
        return [d for d in self.docs if d["kind"] == kind]

    def get(self, kind: str, name: str) -> Doc:
        for doc in self.by_kind(kind):
            if doc["metadata"]["name"] == name:
                return doc
        raise KeyError(f"{kind}/{name} is not in the render")

    def workload(self, kind: str, component: str) -> Doc:
        found = [
            d
            for d in self.by_kind(kind)
            if d["metadata"].get("labels", {}).get("app.kubernetes.io/component") == component
        ]
        if len(found) != 1:
            raise KeyError(f"{kind} of {component}: {len(found)} in the render")
        return found[0]

    def hooks(self, event: str) -> list[Doc]:
        """Hook objects of ``event`` (``pre-install``...), by weight as Helm runs them."""
        out = []
        for doc in self.docs:
            notes = doc["metadata"].get("annotations") or {}
            if event in (notes.get("helm.sh/hook") or "").split(","):
                out.append(doc)
        return sorted(out, key=lambda d: int(d["metadata"]["annotations"]["helm.sh/hook-weight"]))

    def plain(self) -> list[Doc]:
        """What ``helm install`` applies between the pre- and post-install hooks."""
        return [
            d for d in self.docs if "helm.sh/hook" not in (d["metadata"].get("annotations") or {})
        ]


def render(
    release: str, namespace: str, *, values: Sequence[Path] = (), sets: Sequence[str] = ()
) -> Rendered:
    argv = [helm(), "template", release, str(CHART), "--namespace", namespace]
    for path in values:
        argv += ["-f", str(path)]
    for item in sets:
        argv += ["--set", item]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RenderError(done.stderr.strip())
    docs = [d for d in yaml.safe_load_all(done.stdout) if d]
    return Rendered(release, namespace, docs, done.stdout)


def matches(selector: Doc | None, labels: dict[str, str]) -> bool:
    """A ``LabelSelector`` against ``labels``; an absent selector matches everything."""
    if not selector:
        return True
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def container_port(pod_spec: Doc, port: int | str) -> int:
    """A numbered port, or a named one looked up in the Pod's containers."""
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    for c in pod_spec.get("containers", []):
        for p in c.get("ports") or []:
            if p.get("name") == port:
                return int(p["containerPort"])
    raise KeyError(f"no container port named {port!r}")
