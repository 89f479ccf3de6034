from __future__ import annotations

import base64
import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.webhook.config import AccelerateConfig
from shoal.webhook.review import Trigger, response, review
from tests.webhook.checks import patched, validate_pod
from tests.webhook.pods import (
    ACR,
    ACR_P2P,
    DIGEST,
    LABEL,
    admission_review,
    container,
    deployment_pod,
)

CFG = AccelerateConfig(registries=("*.cr.aliyuncs.com", "docker.io", "ghcr.io"))
ON = {LABEL: "p2p"}


def run(body: dict[str, Any], trigger: Trigger = "pod") -> dict[str, Any]:
    return dict(response(review(body, trigger, CFG)))


def test_reference_example() -> None:
    pod = deployment_pod(labels=ON, secrets=["test-registry"])
    body = admission_review(pod)
    out = patched(body, run(body))
    validate_pod(out)
    assert out["spec"]["containers"][0]["image"] == f"{ACR_P2P}/docker-builder/nginx:latest"
    assert out["spec"]["imagePullSecrets"] == [
        {"name": "test-registry"},
        {"name": "acr-credential-test-registry-p2p"},
    ]
    ann = out["metadata"]["annotations"]
    assert ann[LABEL] == "p2p"
    cfg = json.loads(ann["k8s.aliyun.com/p2p-config"])
    assert cfg == {
        "version": 1,
        "trigger": "pod",
        "port": 65001,
        "endpoints": {ACR: ACR_P2P},
        "images": {"containers/test": f"{ACR}/docker-builder/nginx:latest"},
        "pullSecrets": {"test-registry": "acr-credential-test-registry-p2p"},
    }
    assert "name" not in out["metadata"]  # generateName Pods stay nameless


def test_second_run_changes_nothing() -> None:
    pod = deployment_pod(
        labels=ON,
        secrets=["a", "b"],
        init=[container("init", "busybox:1.36")],
        annotations={"other": "kept"},
    )
    body = admission_review(pod)
    once = patched(body, run(body))
    again = admission_review(once)
    answer = run(again)
    assert "patch" not in answer["response"]
    assert once["metadata"]["annotations"]["other"] == "kept"


def test_every_container_kind_digest_and_short_names() -> None:
    pod = deployment_pod(
        labels=ON,
        containers=[
            container("app", f"{ACR}/team/app@{DIGEST}"),
            container("side", "nginx"),
            container("local", "127.0.0.1:5000/x:1"),
            container("other", "quay.io/prom/node-exporter:v1.8.0"),
        ],
        init=[container("migrate", f"ghcr.io/org/migrate:v2@{DIGEST}")],
        ephemeral=[container("debug", "busybox:1.36")],
        secrets=["s1", "s2", "s3"],
    )
    body = admission_review(pod)
    out = patched(body, run(body))
    validate_pod(out)
    images = [c["image"] for c in out["spec"]["containers"]]
    assert images == [
        f"{ACR_P2P}/team/app@{DIGEST}",
        "docker.distributed.io:65001/library/nginx",
        "127.0.0.1:5000/x:1",
        "quay.io/prom/node-exporter:v1.8.0",
    ]
    assert out["spec"]["initContainers"][0]["image"] == (
        f"ghcr.distributed.io:65001/org/migrate:v2@{DIGEST}"
    )
    assert out["spec"]["ephemeralContainers"][0]["image"] == (
        "docker.distributed.io:65001/library/busybox:1.36"
    )
    names = [s["name"] for s in out["spec"]["imagePullSecrets"]]
    assert names == [
        "s1",
        "s2",
        "s3",
        "acr-credential-s1-p2p",
        "acr-credential-s2-p2p",
        "acr-credential-s3-p2p",
    ]
    doc = json.loads(out["metadata"]["annotations"]["k8s.aliyun.com/p2p-config"])
    assert doc["images"]["containers/side"] == "nginx"
    assert doc["images"]["initContainers/migrate"] == f"ghcr.io/org/migrate:v2@{DIGEST}"
    assert set(doc["endpoints"]) == {ACR, "docker.io", "ghcr.io"}


def test_namespace_trigger_and_opt_out() -> None:
    plain = deployment_pod(secrets=["s"])
    body = admission_review(plain)
    out = patched(body, run(body, "namespace"))
    assert out["spec"]["containers"][0]["image"].startswith(ACR_P2P)
    assert json.loads(out["metadata"]["annotations"]["k8s.aliyun.com/p2p-config"])["trigger"] == (
        "namespace"
    )
    opted_out = deployment_pod(labels={LABEL: "none"}, secrets=["s"])
    triggers: tuple[Trigger, ...] = ("pod", "namespace")
    for trigger in triggers:
        d = review(admission_review(opted_out), trigger, CFG)
        assert d.patch == ()
        assert "opted out" in d.reason or "is not" in d.reason
    # the pod entry never acts on an unlabelled Pod
    assert review(admission_review(plain), "pod", CFG).patch == ()


def test_no_pull_secrets_and_no_annotations() -> None:
    pod = deployment_pod(labels=ON)
    body = admission_review(pod)
    out = patched(body, run(body))
    validate_pod(out)
    assert "imagePullSecrets" not in out["spec"]
    assert out["metadata"]["annotations"][LABEL] == "p2p"


def test_already_rewritten_by_hand() -> None:
    pod = deployment_pod(
        labels=ON,
        containers=[container("test", f"{ACR_P2P}/docker-builder/nginx:latest")],
        secrets=["test-registry", "acr-credential-test-registry-p2p"],
    )
    body = admission_review(pod)
    d = review(body, "pod", CFG)
    assert d.secrets == ("test-registry",)
    out = patched(body, dict(response(d)))
    assert out["spec"]["imagePullSecrets"] == pod["spec"]["imagePullSecrets"]
    assert out["spec"]["containers"] == pod["spec"]["containers"]
    assert out["metadata"]["annotations"][LABEL] == "p2p"
    assert "patch" not in run(admission_review(out))["response"]


def test_nothing_accelerated_means_no_change() -> None:
    pod = deployment_pod(labels=ON, containers=[container("x", "quay.io/a/b:1")], secrets=["s"])
    d = review(admission_review(pod), "pod", CFG)
    assert d.patch == () and d.secrets == ()


def test_ephemeral_container_update() -> None:
    created = deployment_pod(labels=ON)
    body = admission_review(created)
    running = patched(body, run(body))
    running["metadata"]["name"] = "test-5d8f7c9b6d-x2x9z"
    with_debug = json.loads(json.dumps(running))
    with_debug["spec"]["ephemeralContainers"] = [
        {"name": "debugger-abcde", "image": "busybox:1.36", "imagePullPolicy": "IfNotPresent"}
    ]
    upd = admission_review(
        with_debug, operation="UPDATE", sub_resource="ephemeralcontainers", old=running
    )
    out = patched(upd, run(upd))
    validate_pod(out)
    assert out["spec"]["ephemeralContainers"][0]["image"] == (
        "docker.distributed.io:65001/library/busybox:1.36"
    )
    assert out["metadata"] == with_debug["metadata"]
    # a second debug container: the first, already there, is never touched again
    hub_cfg = AccelerateConfig(registries=("docker.io",))
    with_two = json.loads(json.dumps(with_debug))
    with_two["spec"]["ephemeralContainers"][0]["image"] = "alpine:3.20"  # as if never rewritten
    with_two["spec"]["ephemeralContainers"].append({"name": "debugger-fghij", "image": "busybox"})
    upd2 = admission_review(
        with_two, operation="UPDATE", sub_resource="ephemeralcontainers", old=with_debug
    )
    d2 = review(upd2, "pod", hub_cfg)
    assert [op["path"] for op in d2.patch] == ["/spec/ephemeralContainers/1/image"]
    # on a Pod that was never accelerated, nothing happens
    plain = deployment_pod(labels=ON)
    plain["spec"]["ephemeralContainers"] = with_debug["spec"]["ephemeralContainers"]
    d = review(
        admission_review(plain, operation="UPDATE", sub_resource="ephemeralcontainers"), "pod", CFG
    )
    assert d.patch == ()


def test_reviews_it_cannot_understand_are_allowed_unchanged() -> None:
    good = admission_review(deployment_pod(labels=ON))
    cases: list[object] = [
        [],
        {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"},
        {**good, "apiVersion": "admission.k8s.io/v1beta1"},
        {
            **good,
            "request": {
                **good["request"],
                "kind": {"group": "apps", "version": "v1", "kind": "Deployment"},
            },
        },
        {**good, "request": {**good["request"], "object": None}},
        {**good, "request": {**good["request"], "operation": "DELETE"}},
    ]
    for body in cases:
        d = review(body, "pod", CFG)
        assert d.patch == ()
        assert d.reason
        resp = response(d)["response"]
        assert resp["allowed"] is True and "patch" not in resp


def test_patch_is_base64_json_patch() -> None:
    body = admission_review(deployment_pod(labels=ON))
    answer = run(body)
    ops = json.loads(base64.b64decode(answer["response"]["patch"]))
    assert {op["op"] for op in ops} <= {"add", "replace"}


images = st.sampled_from(
    [
        "nginx",
        "nginx:1.27",
        f"{ACR}/a/b:1",
        f"{ACR}/a/b@{DIGEST}",
        "ghcr.io/x/y:2",
        "quay.io/x/y:3",
        "localhost:5000/z",
        f"{ACR_P2P}/a/b:1",
    ]
)


@settings(max_examples=60, deadline=None)
@given(
    main=st.lists(images, min_size=1, max_size=4),
    init=st.lists(images, max_size=2),
    secrets=st.lists(st.sampled_from(["a", "b", "acr-credential-a-p2p"]), max_size=3, unique=True),
    trigger=st.sampled_from(["pod", "namespace"]),
)
def test_idempotent_and_valid_for_any_mix(
    main: list[str], init: list[str], secrets: list[str], trigger: Trigger
) -> None:
    pod = deployment_pod(
        labels=ON if trigger == "pod" else None,
        containers=[container(f"c{i}", im) for i, im in enumerate(main)],
        init=[container(f"i{i}", im) for i, im in enumerate(init)] or None,
        secrets=secrets or None,
    )
    body = admission_review(pod)
    once = patched(body, run(body, trigger))
    validate_pod(once)
    again = run(admission_review(once), trigger)
    assert "patch" not in again["response"]
