"""Pods as the API server hands them to a mutating webhook, and reviews around them.

The shapes follow what kube-apiserver sends after defaulting and after the built-in
admission plugins ran (the ServiceAccount plugin has added the token volume and copied
the service account's pull secrets): a Deployment's Pod has ``generateName`` and no
``name``, and ``namespace`` is set on the request, not always on the object.
"""

from __future__ import annotations

import copy
import uuid
from typing import Any

ACR = "test-registry-vpc.cn-hangzhou.cr.aliyuncs.com"
ACR_P2P = "test-registry-vpc.distributed.cn-hangzhou.cr.aliyuncs.com:65001"
LABEL = "k8s.aliyun.com/image-accelerate-mode"
DIGEST = "sha256:" + "ab" * 32


def container(name: str, image: str) -> dict[str, Any]:
    return {
        "name": name,
        "image": image,
        "command": ["sleep", "3600"],
        "resources": {},
        "volumeMounts": [
            {
                "name": "kube-api-access-x7k2p",
                "readOnly": True,
                "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
            }
        ],
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
        "imagePullPolicy": "IfNotPresent",
    }


def deployment_pod(
    *,
    labels: dict[str, str] | None = None,
    containers: list[dict[str, Any]] | None = None,
    init: list[dict[str, Any]] | None = None,
    ephemeral: list[dict[str, Any]] | None = None,
    secrets: list[str] | None = None,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A Pod made by a ReplicaSet of Deployment ``test``, as admission sees it."""
    meta: dict[str, Any] = {
        "generateName": "test-5d8f7c9b6d-",
        "namespace": "default",
        "creationTimestamp": None,
        "labels": {"app": "nginx", "pod-template-hash": "5d8f7c9b6d", **(labels or {})},
        "ownerReferences": [
            {
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "name": "test-5d8f7c9b6d",
                "uid": "0f3c2d6e-1b7a-4c55-9e0d-3a2b1c4d5e6f",
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ],
    }
    if annotations is not None:
        meta["annotations"] = annotations
    spec: dict[str, Any] = {
        "volumes": [
            {
                "name": "kube-api-access-x7k2p",
                "projected": {
                    "sources": [
                        {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                        {
                            "configMap": {
                                "name": "kube-root-ca.crt",
                                "items": [{"key": "ca.crt", "path": "ca.crt"}],
                            }
                        },
                        {
                            "downwardAPI": {
                                "items": [
                                    {
                                        "path": "namespace",
                                        "fieldRef": {
                                            "apiVersion": "v1",
                                            "fieldPath": "metadata.namespace",
                                        },
                                    }
                                ]
                            }
                        },
                    ],
                    "defaultMode": 420,
                },
            }
        ],
        "containers": containers
        if containers is not None
        else [container("test", f"{ACR}/docker-builder/nginx:latest")],
        "restartPolicy": "Always",
        "terminationGracePeriodSeconds": 30,
        "dnsPolicy": "ClusterFirst",
        "serviceAccountName": "default",
        "serviceAccount": "default",
        "securityContext": {},
        "schedulerName": "default-scheduler",
        "tolerations": [
            {
                "key": "node.kubernetes.io/not-ready",
                "operator": "Exists",
                "effect": "NoExecute",
                "tolerationSeconds": 300,
            },
            {
                "key": "node.kubernetes.io/unreachable",
                "operator": "Exists",
                "effect": "NoExecute",
                "tolerationSeconds": 300,
            },
        ],
        "priority": 0,
        "enableServiceLinks": True,
        "preemptionPolicy": "PreemptLowerPriority",
    }
    if init is not None:
        spec["initContainers"] = init
    if ephemeral is not None:
        spec["ephemeralContainers"] = [
            {k: v for k, v in c.items() if k not in ("resources",)} for c in ephemeral
        ]
    if secrets is not None:
        spec["imagePullSecrets"] = [{"name": s} for s in secrets]
    return {"kind": "Pod", "apiVersion": "v1", "metadata": meta, "spec": spec, "status": {}}


def admission_review(
    pod: dict[str, Any],
    *,
    operation: str = "CREATE",
    sub_resource: str = "",
    namespace: str = "default",
    dry_run: bool = False,
    old: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """An ``admission.k8s.io/v1`` review of ``pod`` as kube-apiserver 1.33 sends it."""
    request: dict[str, Any] = {
        "uid": str(uuid.uuid4()),
        "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
        "requestResource": {"group": "", "version": "v1", "resource": "pods"},
        "namespace": namespace,
        "operation": operation,
        "userInfo": {
            "username": "system:serviceaccount:kube-system:replicaset-controller",
            "uid": "5b6c7d8e-9f01-4a23-b456-789abcdef012",
            "groups": [
                "system:serviceaccounts",
                "system:serviceaccounts:kube-system",
                "system:authenticated",
            ],
        },
        "object": copy.deepcopy(pod),
        "oldObject": copy.deepcopy(old),
        "dryRun": dry_run,
        "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"}
        if operation == "CREATE"
        else {"kind": "UpdateOptions", "apiVersion": "meta.k8s.io/v1"},
    }
    if sub_resource:
        request["subResource"] = sub_resource
        request["requestSubResource"] = sub_resource
    name = pod["metadata"].get("name")
    if name:
        request["name"] = name
    return {"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1", "request": request}
