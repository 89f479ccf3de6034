"""Where a workload's Pods can land, decided from real object shapes (``kubectl get -o
json``): the nodes a preheat goes to are the nodes the scheduler's filters allow."""

from __future__ import annotations

from typing import Any

from shoal.webhook.workloads import PREHEAT_KEY, event, fits, images_of, want
from tests.webhook.workload_objects import container, namespace, node, with_image, workload

ON = {PREHEAT_KEY: "true"}
GPU_TAINT = {"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}
NODES = [
    node("n-a", "10.0.0.1", labels={"topology.kubernetes.io/zone": "a", "disk": "ssd"}),
    node("n-b", "10.0.0.2", labels={"topology.kubernetes.io/zone": "b", "cores": "64"}),
    node("n-gpu", "10.0.0.3", labels={"topology.kubernetes.io/zone": "a"}, taints=[GPU_TAINT]),
    node(
        "n-cp",
        "10.0.0.4",
        taints=[{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}],
    ),
    node(
        "n-soft", "10.0.0.5", taints=[{"key": "spot", "value": "1", "effect": "PreferNoSchedule"}]
    ),
    node(
        "n-cordoned",
        "10.0.0.6",
        unschedulable=True,
        taints=[{"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}],
    ),
]
DEFAULT = namespace("default")


def nodes_for(
    kind: str, spec: dict[str, Any], ns: dict[str, Any] = DEFAULT, **kw: Any
) -> tuple[str, ...]:
    w = want(kind, workload(kind, "app", ns["metadata"]["name"], spec, **kw), ns, NODES)
    assert w is not None
    return w.nodes


def test_a_plain_deployment_goes_to_every_untainted_schedulable_node() -> None:
    spec = {"containers": [container("reg.example/app:1")]}
    assert nodes_for("Deployment", spec, labels=ON) == ("10.0.0.1", "10.0.0.2", "10.0.0.5")


def test_node_selector_and_required_affinity_narrow_it() -> None:
    sel = {"containers": [container("reg.example/app:1")], "nodeSelector": {"disk": "ssd"}}
    assert nodes_for("Deployment", sel, labels=ON) == ("10.0.0.1",)
    affinity = {
        "containers": [container("reg.example/db:1")],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [
                {"matchExpressions": [
                    {"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["b"]},
                    {"key": "cores", "operator": "Gt", "values": ["32"]},
                ]},
                {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n-soft"]}]},
            ]
        }, "preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 1, "preference": {"matchExpressions": [
                {"key": "disk", "operator": "Exists"}]}}]}},
    }  # fmt: skip
    assert nodes_for("StatefulSet", affinity, labels=ON) == ("10.0.0.2", "10.0.0.5")
    not_in = {
        "containers": [container("reg.example/db:1")],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [
                {"key": "topology.kubernetes.io/zone", "operator": "NotIn", "values": ["a"]},
                {"key": "disk", "operator": "DoesNotExist"}]}]}}},
    }  # fmt: skip
    assert nodes_for("StatefulSet", not_in, labels=ON) == ("10.0.0.2", "10.0.0.5")


def test_tolerations_against_taints_and_daemonsets_on_cordoned_nodes() -> None:
    tol = {
        "containers": [container("reg.example/ml:1")],
        "tolerations": [
            {"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}
        ],
        "nodeSelector": {"topology.kubernetes.io/zone": "a"},
    }
    assert nodes_for("Deployment", tol, labels=ON) == ("10.0.0.1", "10.0.0.3")
    wrong = {**tol, "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "tpu"}]}
    assert nodes_for("Deployment", wrong, labels=ON) == ("10.0.0.1",)
    everything = {
        "containers": [container("reg.example/agent:1")],
        "tolerations": [{"operator": "Exists"}],
    }
    daemon = nodes_for("DaemonSet", everything, labels=ON)
    assert daemon == tuple(f"10.0.0.{i}" for i in range(1, 7))  # a DaemonSet tolerates cordoning
    assert "10.0.0.6" not in nodes_for("Deployment", everything, labels=ON)
    assert not fits({}, node("x", "10.1.1.1", taints=[{"key": "k", "effect": "NoExecute"}]))


def test_who_asks_the_namespace_the_workload_and_the_opt_out() -> None:
    spec = {"containers": [container("reg.example/app:1")]}
    on_ns = namespace("shop", labels=ON)
    assert want("Deployment", workload("Deployment", "a", "shop", spec), on_ns, NODES) is not None
    off = workload("Deployment", "a", "shop", spec, labels={PREHEAT_KEY: "false"})
    assert want("Deployment", off, on_ns, NODES) is None
    by_annotation = workload("Deployment", "a", "default", spec, annotations=ON)
    assert want("Deployment", by_annotation, DEFAULT, NODES) is not None
    assert want("Deployment", workload("Deployment", "a", "default", spec), DEFAULT, NODES) is None


def test_images_pull_secrets_and_a_change_of_images() -> None:
    spec = {
        "initContainers": [container("reg.example/init:1", "init")],
        "containers": [container("reg.example/app:1"), container("reg.example/app:1", "twin"),
                       container("other.example/side:2", "side")],
        "imagePullSecrets": [{"name": "regcred"}],
    }  # fmt: skip
    assert images_of(spec) == ("reg.example/init:1", "reg.example/app:1", "other.example/side:2")
    obj = workload("Deployment", "web", "default", spec, labels=ON)
    w = want("Deployment", obj, DEFAULT, NODES)
    assert w is not None and w.pull_secrets == ("regcred",) and w.key == "Deployment/default/web"
    same_nodes_other_image = want(
        "Deployment", with_image(obj, "reg.example/app:2"), DEFAULT, NODES
    )
    assert same_nodes_other_image is not None
    assert same_nodes_other_image.fingerprint != w.fingerprint
    fewer_nodes = want("Deployment", obj, DEFAULT, NODES[:1])
    assert fewer_nodes is not None and fewer_nodes.fingerprint == w.fingerprint
    ev = event(w, "uid-1", "PreheatStarted", "job x", "Normal", "2026-12-01T10:00:00Z")
    assert ev["involvedObject"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web",
                                    "namespace": "default", "uid": "uid-1"}  # fmt: skip
    assert ev["metadata"]["namespace"] == "default" and ev["type"] == "Normal"
