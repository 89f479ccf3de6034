"""Typed shapes of the Kubernetes objects the webhook reads and writes.

Only the fields shoal touches are spelled out; everything else in an object passes
through untouched because the webhook answers with a JSONPatch, never a whole object.
``total=False`` everywhere: the API server omits empty fields, and a Pod from a
Deployment has no ``metadata.name`` at admission time (only ``generateName``).
"""

from __future__ import annotations

from typing import Any, Literal, TypedDict

Operation = Literal["CREATE", "UPDATE", "DELETE", "CONNECT"]


class GroupVersionKind(TypedDict, total=False):
    group: str
    version: str
    kind: str


class GroupVersionResource(TypedDict, total=False):
    group: str
    version: str
    resource: str


class UserInfo(TypedDict, total=False):
    username: str
    uid: str
    groups: list[str]


class OwnerReference(TypedDict, total=False):
    apiVersion: str
    kind: str
    name: str
    uid: str
    controller: bool
    blockOwnerDeletion: bool


class ObjectMeta(TypedDict, total=False):
    name: str
    generateName: str
    namespace: str
    uid: str
    resourceVersion: str
    labels: dict[str, str]
    annotations: dict[str, str]
    ownerReferences: list[OwnerReference]
    creationTimestamp: str


class Container(TypedDict, total=False):
    name: str
    image: str


class LocalObjectReference(TypedDict, total=False):
    name: str


class PodSpec(TypedDict, total=False):
    containers: list[Container]
    initContainers: list[Container]
    ephemeralContainers: list[Container]
    imagePullSecrets: list[LocalObjectReference]
    serviceAccountName: str


class Pod(TypedDict, total=False):
    apiVersion: str
    kind: str
    metadata: ObjectMeta
    spec: PodSpec


class AdmissionRequest(TypedDict, total=False):
    uid: str
    kind: GroupVersionKind
    resource: GroupVersionResource
    subResource: str
    requestKind: GroupVersionKind
    requestResource: GroupVersionResource
    requestSubResource: str
    name: str
    namespace: str
    operation: Operation
    userInfo: UserInfo
    object: Pod | None
    oldObject: Pod | None
    dryRun: bool
    options: dict[str, Any]


class AdmissionStatus(TypedDict, total=False):
    code: int
    message: str


class AdmissionResponse(TypedDict, total=False):
    uid: str
    allowed: bool
    patchType: Literal["JSONPatch"]
    #: base64 of the JSON array of operations
    patch: str
    warnings: list[str]
    status: AdmissionStatus


class AdmissionReview(TypedDict, total=False):
    apiVersion: Literal["admission.k8s.io/v1"]
    kind: Literal["AdmissionReview"]
    request: AdmissionRequest
    response: AdmissionResponse


class PatchOperation(TypedDict, total=False):
    op: Literal["add", "replace", "remove", "test"]
    path: str
    value: Any


SecretType = Literal[
    "Opaque",
    "kubernetes.io/dockerconfigjson",
    "kubernetes.io/dockercfg",
    "kubernetes.io/service-account-token",
    "kubernetes.io/tls",
]


class Secret(TypedDict, total=False):
    apiVersion: str
    kind: str
    metadata: ObjectMeta
    type: str
    #: values are base64, as the API returns them
    data: dict[str, str]
    immutable: bool


class SecretList(TypedDict, total=False):
    apiVersion: str
    kind: str
    metadata: dict[str, str]
    items: list[Secret]


class WatchEvent(TypedDict, total=False):
    type: Literal["ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR"]
    object: dict[str, Any]
