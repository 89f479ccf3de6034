"""Secrets as ``kubectl get secret -o json`` shows them (API server 1.33), and helpers."""

from __future__ import annotations

import base64
import json
from typing import Any

ACR = "test-registry-vpc.cn-hangzhou.cr.aliyuncs.com"
ACR_P2P = "test-registry-vpc.distributed.cn-hangzhou.cr.aliyuncs.com:65001"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def auth_entry(user: str, password: str) -> dict[str, str]:
    return {"username": user, "password": password, "auth": b64(f"{user}:{password}")}


def dockerconfigjson(
    name: str, auths: dict[str, Any], *, namespace: str = "default"
) -> dict[str, Any]:
    """A pull secret as made by ``kubectl create secret docker-registry``."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": "8d1f6a2e-4b3c-4e5f-9a0b-1c2d3e4f5a6b",
            "resourceVersion": "48213",
            "creationTimestamp": "2026-11-20T08:14:03Z",
            "managedFields": [
                {
                    "manager": "kubectl-create",
                    "operation": "Update",
                    "apiVersion": "v1",
                    "time": "2026-11-20T08:14:03Z",
                    "fieldsType": "FieldsV1",
                    "fieldsV1": {"f:data": {".": {}, "f:.dockerconfigjson": {}}, "f:type": {}},
                }
            ],
        },
        "data": {".dockerconfigjson": b64(json.dumps({"auths": auths}))},
        "type": "kubernetes.io/dockerconfigjson",
    }


def dockercfg(name: str, entries: dict[str, Any], *, namespace: str = "default") -> dict[str, Any]:
    """The legacy ``kubernetes.io/dockercfg`` form: the map without ``auths``."""
    s = dockerconfigjson(name, {}, namespace=namespace)
    s["type"] = "kubernetes.io/dockercfg"
    s["data"] = {".dockercfg": b64(json.dumps(entries))}
    return s


def auths_of(secret: dict[str, Any]) -> dict[str, Any]:
    doc = json.loads(base64.b64decode(secret["data"][".dockerconfigjson"]))
    auths: dict[str, Any] = doc["auths"]
    return auths


TEST_REGISTRY = dockerconfigjson(
    "test-registry",
    {
        ACR: auth_entry("acr-user@example", "s3cret"),
        "https://index.docker.io/v1/": auth_entry("hubuser", "hubtoken"),
        "quay.io": auth_entry("robot+ci", "quaytoken"),
    },
)

OPAQUE = {
    "apiVersion": "v1",
    "kind": "Secret",
    "metadata": {
        "name": "db-password",
        "namespace": "default",
        "uid": "11111111-2222-4333-8444-555555555555",
        "resourceVersion": "777",
        "creationTimestamp": "2026-11-20T08:14:03Z",
    },
    "data": {"password": b64("hunter2")},
    "type": "Opaque",
}
