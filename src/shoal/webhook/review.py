"""AdmissionReview in, decision out: the webhook's whole policy, with no IO.

The HTTPS server (``server.py``) only moves bytes and creates secret clones; every
choice is made here, so the tests can feed recorded reviews straight in.

Rules, in order:

1. A body that is not an ``admission.k8s.io/v1`` AdmissionReview of a Pod is answered
   ``allowed`` with no patch, and the reason goes to the log. The webhook never blocks
   a Pod (the chart also sets ``failurePolicy: Ignore``). Webhooks run before the API
   server validates the object, so any field may hold any type: every read goes
   through ``_map``/``_seq``/``_text``, and what has the wrong type counts as absent.
2. Which Pods: the API server tells us *why* it called by the path it called. The
   ``pod`` entry of the MutatingWebhookConfiguration selects Pods whose own label is
   ``labelKey: labelValue``; the ``namespace`` entry selects Pods without that label in
   namespaces carrying it (the API server evaluates the namespaceSelector from its own
   namespace cache, so the webhook needs no namespace lookup and no RBAC for it). A Pod
   whose own label has another value has opted out: the selectors keep it away, and
   the checks below refuse it again should the configuration be edited by hand.
3. What changes: every container, init container and ephemeral container whose image
   is in an accelerated registry gets the ``.distributed.`` address (``images.py``);
   the Pod gets the annotations ``<modeAnnotation>: <labelValue>`` and
   ``<configAnnotation>`` (JSON, below); every pull secret ``S`` gets its clone
   ``acr-credential-S-p2p`` appended after the originals, which stay.
4. Idempotent: images already in the ``.distributed.`` form, clones already listed and
   annotations already equal produce no operation, so a second run (the chart sets
   ``reinvocationPolicy: IfNeeded``) returns an empty patch.
5. Ephemeral containers arrive later, as an UPDATE of the ``ephemeralcontainers``
   subresource. Only their images can change there (the API server drops the rest), and
   only on a Pod that was accelerated when it was created.

The ``k8s.aliyun.com/p2p-config`` annotation is compact JSON with sorted keys::

    {"endpoints": {"<registry>": "<a>.distributed.<b>:65001"},
     "images": {"containers/<name>": "<original image>", "initContainers/<name>": ...},
     "port": 65001,
     "pullSecrets": {"<S>": "acr-credential-<S>-p2p"},
     "trigger": "pod" | "namespace",
     "version": 1}

``images`` maps each rewritten container to its original reference, so an operator can
always see (and restore) what the Pod asked for.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from shoal.webhook.config import AccelerateConfig
from shoal.webhook.images import (
    HostPatterns,
    is_distributed,
    origin_of,
    parse_image,
    rewrite_image,
)
from shoal.webhook.types import AdmissionReview, PatchOperation, Pod

Trigger = Literal["pod", "namespace"]
CONTAINER_FIELDS = ("initContainers", "containers", "ephemeralContainers")
CONFIG_VERSION = 1
#: the p2p-config annotation we read back: larger (or deeper) is not ours, and is
#: replaced rather than parsed (a 100,000-deep ``[[[...`` once took the webhook down)
MAX_CONFIG_ANNOTATION = 64 << 10
MAX_CONFIG_DEPTH = 8


def _map(value: object) -> dict[str, Any]:
    """``value`` if it is a JSON object, else empty: the API server validates the
    object after the webhooks, so what reaches us may hold any type anywhere."""
    return value if isinstance(value, dict) else {}


def _seq(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def _short(value: object, limit: int = 120) -> str:
    """For a log line: one line, bounded, whatever the type."""
    text = value if isinstance(value, str) else repr(value)
    return " ".join(text[: limit * 2].split())[:limit]


@dataclass(frozen=True, slots=True)
class Decision:
    """What to answer, and which pull secrets need their clone before answering."""

    uid: str
    patch: tuple[PatchOperation, ...] = ()
    #: original pull secrets of the Pod whose ``-p2p`` clones must exist
    secrets: tuple[str, ...] = ()
    namespace: str = ""
    #: the Pod's name, or ``generateName*`` for Pods that have none yet
    pod: str = ""
    dry_run: bool = False
    #: one line for the log: what was done, or why nothing was
    reason: str = ""
    understood: bool = True
    rewritten: tuple[str, ...] = field(default=())


def review(body: object, trigger: Trigger, cfg: AccelerateConfig) -> Decision:
    """Decide what to do with one AdmissionReview (already JSON-decoded)."""
    if not isinstance(body, dict):
        return Decision(uid="", understood=False, reason="body is not a JSON object")
    request = body.get("request")
    uid = request.get("uid") if isinstance(request, dict) else None
    if not isinstance(request, dict) or not isinstance(uid, str):
        return Decision(uid="", understood=False, reason="no request.uid")
    if body.get("apiVersion") != "admission.k8s.io/v1" or body.get("kind") != "AdmissionReview":
        return Decision(
            uid=uid,
            understood=False,
            reason=f"not an admission.k8s.io/v1 AdmissionReview: {_short(body.get('apiVersion'))}",
        )
    kind = request.get("kind")
    if not isinstance(kind, dict) or kind.get("kind") != "Pod" or kind.get("group", "") != "":
        return Decision(uid=uid, understood=False, reason=f"not a Pod: {_short(kind)}")
    pod = request.get("object")
    if not isinstance(pod, dict) or not isinstance(pod.get("spec"), dict):
        return Decision(uid=uid, understood=False, reason="request.object is not a Pod")
    namespace = _text(request.get("namespace"))
    meta = _map(pod.get("metadata"))
    name = _text(meta.get("name")) or f"{_text(meta.get('generateName'))}*"
    base = Decision(uid=uid, namespace=namespace, pod=name, dry_run=request.get("dryRun") is True)
    operation = request.get("operation")
    sub = request.get("subResource", "") or ""
    if operation == "CREATE" and sub == "":
        return _on_create(base, cast(Pod, pod), trigger, cfg)
    if operation == "UPDATE" and sub == "ephemeralcontainers":
        return _on_ephemeral(base, cast(Pod, pod), _map(request.get("oldObject")), trigger, cfg)
    return _nothing(base, f"operation {_short(operation)} {_short(sub)} is not handled")


def _nothing(base: Decision, reason: str) -> Decision:
    return Decision(
        uid=base.uid, namespace=base.namespace, pod=base.pod, dry_run=base.dry_run, reason=reason
    )


def _selected(pod: Pod, trigger: Trigger, cfg: AccelerateConfig) -> str | None:
    """``None`` when the Pod is to be accelerated, else why not."""
    value = _map(_map(pod.get("metadata")).get("labels")).get(cfg.label_key)
    if trigger == "pod":
        if value != cfg.label_value:
            return f"label {cfg.label_key}={_short(value)} is not {cfg.label_value}"
        return None
    if value is not None and value != cfg.label_value:
        return f"opted out with label {cfg.label_key}={_short(value)}"
    return None


def _image_ops(
    pod: Pod, fields: tuple[str, ...], cfg: AccelerateConfig, skip: frozenset[str] = frozenset()
) -> tuple[list[PatchOperation], dict[str, str], dict[str, str], int]:
    """Patch operations for the images, the originals by container, the endpoints by
    registry, and how many images were already in the distributed form. Containers
    named in ``skip`` are left as they are."""
    patterns = HostPatterns.of(cfg.registries)
    ops: list[PatchOperation] = []
    originals: dict[str, str] = {}
    endpoints: dict[str, str] = {}
    already = 0
    spec: Mapping[str, Any] = _map(pod.get("spec"))
    for fieldname in fields:
        for i, container in enumerate(_seq(spec.get(fieldname))):
            if not isinstance(container, dict):
                continue
            image = container.get("image")
            cname = _text(container.get("name"))
            if not isinstance(image, str) or cname in skip:
                continue
            key = f"{fieldname}/{cname or i}"
            ref = parse_image(image)
            if ref is not None and is_distributed(ref.host):
                origin = origin_of(ref.host)
                if origin is not None and ref.host.endswith(f":{cfg.p2p_port}"):
                    already += 1
                    endpoints[origin] = ref.host
                continue
            rw = rewrite_image(image, patterns, cfg.p2p_port)
            if rw is None:
                continue
            ops.append(
                {"op": "replace", "path": f"/spec/{fieldname}/{i}/image", "value": rw.rewritten}
            )
            originals[key] = rw.original
            endpoints[rw.registry] = rw.endpoint
    return ops, originals, endpoints, already


def _on_create(base: Decision, pod: Pod, trigger: Trigger, cfg: AccelerateConfig) -> Decision:
    why_not = _selected(pod, trigger, cfg)
    if why_not is not None:
        return _nothing(base, why_not)
    ops, originals, endpoints, already = _image_ops(pod, CONTAINER_FIELDS, cfg)
    if not ops and not already:
        return _nothing(base, "no image in an accelerated registry")

    spec = _map(pod.get("spec"))
    present = [_text(_map(s).get("name")) for s in _seq(spec.get("imagePullSecrets"))]
    originals_s = [s for s in dict.fromkeys(present) if s and not cfg.is_clone_name(s)]
    wanted = [cfg.clone_name(s) for s in originals_s]
    missing = [c for c in wanted if c not in present]
    if missing:
        if isinstance(spec.get("imagePullSecrets"), list):
            ops += [
                {"op": "add", "path": "/spec/imagePullSecrets/-", "value": {"name": c}}
                for c in missing
            ]
        else:  # unreachable today (no originals, no clones), kept for safety
            ops.append(
                {
                    "op": "add",
                    "path": "/spec/imagePullSecrets",
                    "value": [{"name": c} for c in missing],
                }
            )

    annotations = _map(pod.get("metadata")).get("annotations")
    current = annotations if isinstance(annotations, dict) else None
    if "metadata" in pod and not isinstance(pod.get("metadata"), dict):
        return _nothing(base, "metadata is not an object")
    config_doc = _config_document(
        current.get(cfg.config_annotation) if current else None,
        trigger=trigger,
        port=cfg.p2p_port,
        images=originals,
        endpoints=endpoints,
        secrets={s: cfg.clone_name(s) for s in originals_s},
    )
    wanted_ann = {cfg.mode_annotation: cfg.label_value, cfg.config_annotation: config_doc}
    if current is None:
        ops.append({"op": "add", "path": "/metadata/annotations", "value": wanted_ann})
    else:
        for key, value in wanted_ann.items():
            if current.get(key) != value:
                ops.append(
                    {"op": "add", "path": f"/metadata/annotations/{_escape(key)}", "value": value}
                )

    rewritten = tuple(op["value"] for op in ops if op["op"] == "replace")
    reason = (
        f"rewrote {len(rewritten)} image(s), {len(missing)} pull secret clone(s) added"
        if ops
        else "already accelerated, nothing to change"
    )
    return Decision(
        uid=base.uid,
        patch=tuple(ops),
        secrets=tuple(originals_s),
        namespace=base.namespace,
        pod=base.pod,
        dry_run=base.dry_run,
        reason=f"{reason} (trigger {trigger})",
        rewritten=rewritten,
    )


def _on_ephemeral(
    base: Decision, pod: Pod, old: Mapping[str, Any], trigger: Trigger, cfg: AccelerateConfig
) -> Decision:
    why_not = _selected(pod, trigger, cfg)
    if why_not is not None:
        return _nothing(base, why_not)
    annotations = _map(_map(pod.get("metadata")).get("annotations"))
    if annotations.get(cfg.mode_annotation) != cfg.label_value:
        return _nothing(base, "ephemeral container on a Pod that was not accelerated")
    # ephemeral containers cannot change once added: touch only the new ones, or the
    # API server would refuse the whole update (and with it the user's debug container)
    existing = _seq(_map(old.get("spec")).get("ephemeralContainers"))
    names = frozenset(_text(_map(c).get("name")) for c in existing)
    ops, _, _, _ = _image_ops(pod, ("ephemeralContainers",), cfg, skip=names)
    if not ops:
        return _nothing(base, "no ephemeral container image to rewrite")
    return Decision(
        uid=base.uid,
        patch=tuple(ops),
        namespace=base.namespace,
        pod=base.pod,
        dry_run=base.dry_run,
        reason=f"rewrote {len(ops)} ephemeral container image(s)",
        rewritten=tuple(op["value"] for op in ops),
    )


def _config_document(
    existing: object,
    *,
    trigger: Trigger,
    port: int,
    images: dict[str, str],
    endpoints: dict[str, str],
    secrets: dict[str, str],
) -> str:
    """The p2p-config JSON, merged into what an earlier run wrote so reruns are no-ops."""
    old: dict[str, Any] = {}
    if isinstance(existing, str) and _shallow(existing):
        try:
            loaded = json.loads(existing)
        except (ValueError, RecursionError):
            loaded = None
        if isinstance(loaded, dict) and loaded.get("version") == CONFIG_VERSION:
            old = loaded

    def merged(key: str, new: dict[str, str]) -> dict[str, str]:
        prev = old.get(key)
        out = (
            {k: v for k, v in prev.items() if isinstance(v, str)} if isinstance(prev, dict) else {}
        )
        out.update(new)
        return out

    doc = {
        "version": CONFIG_VERSION,
        "trigger": old.get("trigger", trigger)
        if old.get("trigger") in ("pod", "namespace")
        else trigger,
        "port": port,
        "endpoints": merged("endpoints", endpoints),
        "images": merged("images", images),
        "pullSecrets": merged("pullSecrets", secrets),
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":"))


def _shallow(text: str) -> bool:
    """Small enough and nested at most ``MAX_CONFIG_DEPTH`` deep to be our document
    (a bracket count that ignores strings: a quoted ``[`` only makes it stricter)."""
    if len(text) > MAX_CONFIG_ANNOTATION:
        return False
    depth = 0
    for ch in text:
        if ch in "[{":
            depth += 1
            if depth > MAX_CONFIG_DEPTH:
                return False
        elif ch in "]}":
            depth -= 1
    return True


def _escape(key: str) -> str:
    """JSON Pointer escaping (RFC 6901) of one path segment."""
    return key.replace("~", "~0").replace("/", "~1")


def response(decision: Decision) -> AdmissionReview:
    """The AdmissionReview to send back: always allowed, with the patch if any."""
    resp: AdmissionReview = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": {"uid": decision.uid, "allowed": True},
    }
    if decision.patch:
        payload = json.dumps(list(decision.patch), separators=(",", ":")).encode()
        resp["response"]["patchType"] = "JSONPatch"
        resp["response"]["patch"] = base64.b64encode(payload).decode("ascii")
    return resp
