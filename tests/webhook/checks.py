"""Apply a webhook answer to the Pod it was about, and check the result is a valid Pod."""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

import jsonpatch
import kubernetes_validate

#: the Kubernetes version whose schemas the results are checked against
K8S_VERSION = "1.33.0"


def patched(review: dict[str, Any], answer: dict[str, Any]) -> dict[str, Any]:
    """The Pod as the API server would store it after applying the answer's patch."""
    resp = answer["response"]
    assert resp["uid"] == review["request"]["uid"]
    assert resp["allowed"] is True
    pod = copy.deepcopy(review["request"]["object"])
    if "patch" not in resp:
        return dict(pod)
    assert resp["patchType"] == "JSONPatch"
    ops = json.loads(base64.b64decode(resp["patch"]))
    result: dict[str, Any] = jsonpatch.apply_patch(pod, ops)
    return result


def validate_pod(pod: dict[str, Any]) -> None:
    """Raise unless ``pod`` is a valid v1 Pod (strict: no unknown fields)."""
    clean = copy.deepcopy(pod)
    # the API server sends creationTimestamp null at admission; the schema wants a string
    if clean.get("metadata", {}).get("creationTimestamp") is None:
        clean["metadata"].pop("creationTimestamp", None)
    kubernetes_validate.validate(clean, K8S_VERSION, strict=True)
