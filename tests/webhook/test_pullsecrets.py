from __future__ import annotations

import copy
from typing import Any, cast

import kubernetes_validate

from shoal.webhook.config import AccelerateConfig
from shoal.webhook.pullsecrets import CLONE_OF, MANAGED_BY, desired_clone, plan
from shoal.webhook.types import Secret
from tests.webhook.checks import K8S_VERSION
from tests.webhook.recorded import (
    ACR,
    ACR_P2P,
    OPAQUE,
    TEST_REGISTRY,
    auth_entry,
    auths_of,
    dockercfg,
    dockerconfigjson,
)

CFG = AccelerateConfig(registries=("*.cr.aliyuncs.com", "docker.io"))


def S(d: dict[str, Any]) -> Secret:
    return cast(Secret, copy.deepcopy(d))


def test_clone_has_distributed_keys_owner_and_labels() -> None:
    clone = desired_clone(S(TEST_REGISTRY), CFG)
    assert clone is not None
    kubernetes_validate.validate(dict(clone), K8S_VERSION, strict=True)
    meta = clone["metadata"]
    assert meta["name"] == "acr-credential-test-registry-p2p"
    assert meta["namespace"] == "default"
    assert meta["labels"] == {MANAGED_BY: "shoal", CLONE_OF: "test-registry"}
    assert meta["ownerReferences"] == [
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "name": "test-registry",
            "uid": TEST_REGISTRY["metadata"]["uid"],
            "blockOwnerDeletion": False,
        }
    ]
    auths = auths_of(dict(clone))
    original = auths_of(TEST_REGISTRY)
    # quay.io is not accelerated: no entry; the Hub's legacy key maps to docker.io
    assert auths == {
        ACR_P2P: original[ACR],
        "docker.distributed.io:65001": original["https://index.docker.io/v1/"],
    }
    assert clone["type"] == "kubernetes.io/dockerconfigjson"


def test_legacy_dockercfg_is_cloned_as_dockerconfigjson() -> None:
    src = dockercfg("old", {ACR: auth_entry("u", "p")})
    clone = desired_clone(S(src), CFG)
    assert clone is not None and auths_of(dict(clone)) == {ACR_P2P: auth_entry("u", "p")}


def test_not_a_pull_secret_or_nothing_accelerated() -> None:
    assert desired_clone(S(OPAQUE), CFG) is None
    other = dockerconfigjson("q", {"quay.io": auth_entry("u", "p")})
    assert desired_clone(S(other), CFG) is None
    broken = dockerconfigjson("b", {})
    broken["data"][".dockerconfigjson"] = "not base64!"
    assert desired_clone(S(broken), CFG) is None


def test_plan_create_then_nothing_then_update() -> None:
    src = S(TEST_REGISTRY)
    p = plan("default", "test-registry", src, None, CFG)
    assert p.action == "create" and p.body is not None
    stored = cast(Secret, {**copy.deepcopy(p.body)})
    stored["metadata"]["resourceVersion"] = "50000"
    stored["metadata"]["uid"] = "c1c1c1c1-0000-4000-8000-000000000000"
    assert plan("default", "test-registry", src, stored, CFG).action == "none"

    changed = S(dockerconfigjson("test-registry", {ACR: auth_entry("acr-user@example", "new")}))
    changed["metadata"]["resourceVersion"] = "48999"
    p = plan("default", "test-registry", changed, stored, CFG)
    assert p.action == "update" and p.body is not None
    assert p.body["metadata"]["resourceVersion"] == "50000"  # optimistic concurrency
    assert auths_of(dict(p.body)) == {ACR_P2P: auth_entry("acr-user@example", "new")}


def test_plan_leaves_foreign_secrets_and_missing_sources() -> None:
    foreign = S(dockerconfigjson("acr-credential-test-registry-p2p", {}))
    assert plan("default", "test-registry", S(TEST_REGISTRY), foreign, CFG).action == "none"
    assert plan("default", "gone", None, None, CFG).action == "none"


def test_plan_deletes_clone_when_source_drops_accelerated_registries() -> None:
    clone = desired_clone(S(TEST_REGISTRY), CFG)
    assert clone is not None
    now_quay = S(dockerconfigjson("test-registry", {"quay.io": auth_entry("u", "p")}))
    assert plan("default", "test-registry", now_quay, clone, CFG).action == "delete"
