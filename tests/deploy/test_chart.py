"""The Helm chart, rendered by a real Helm binary and checked object by object.

Every built-in object must pass ``kubernetes-validate`` (strict: unknown fields are
errors) for the oldest and newest Kubernetes the chart is tested against; objects of
CRDs the validator has no schema for (cert-manager, Prometheus operator) get a
structural check. The config files in the ConfigMaps are parsed by shoal's own config
loaders, so a key the programs would refuse never ships in the chart.

Helm comes from ``scripts/install-helm.sh`` (run by ``make test``); on a machine
without it these tests skip, except under CI, where they fail.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from cryptography import x509

from shoal.config import parse_config
from shoal.webhook.config import parse_webhook_config

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "shoal"
FULL = Path(__file__).with_name("values-full.yaml")
NS = "shoal-system"
#: the chart's kubeVersion floor, and the version the webhook tests check Pods against
K8S_VERSIONS = ("1.25.0", "1.33.0")
CRD_KINDS = {
    ("cert-manager.io/v1", "Issuer"),
    ("cert-manager.io/v1", "Certificate"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
}


def helm() -> str:
    found = os.environ.get("SHOAL_HELM") or shutil.which("helm")
    if not found:
        if os.environ.get("CI"):
            pytest.fail("helm is missing: scripts/install-helm.sh should have installed it")
        pytest.skip("helm is not installed (bash scripts/install-helm.sh)")
    return found


def render(*args: str) -> list[dict[str, Any]]:
    out = subprocess.run(
        [helm(), "template", "shoal", str(CHART), "--namespace", NS, *args],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


RENDERS = {
    "default": (),
    "full": ("-f", str(FULL)),
    "full-cert-manager": (
        "-f",
        str(FULL),
        "--api-versions",
        "cert-manager.io/v1",
        "--api-versions",
        "monitoring.coreos.com/v1",
    ),
}


@pytest.fixture(scope="module", params=sorted(RENDERS))
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    name: str = request.param
    return name, render(*RENDERS[name])


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str, suffix: str = "") -> dict[str, Any]:
    found = [d for d in by_kind(docs, kind) if d["metadata"]["name"].endswith(suffix)]
    assert len(found) == 1, (kind, suffix, [d["metadata"]["name"] for d in found])
    return found[0]


def test_every_object_is_valid(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    assert docs
    for doc in docs:
        key = (doc["apiVersion"], doc["kind"])
        if key in CRD_KINDS:
            assert doc["metadata"]["name"] and doc["metadata"]["namespace"] == NS
            assert isinstance(doc["spec"], dict) and doc["spec"]
            continue
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)


def test_helm_lint() -> None:
    for extra in ((), ("-f", str(FULL))):
        done = subprocess.run(
            [helm(), "lint", "--strict", str(CHART), *extra],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert "0 chart(s) failed" in done.stdout


def test_agent_and_root_configs_load_in_shoal(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    name, docs = rendered
    agent = parse_config(
        yaml.safe_load(one(docs, "ConfigMap", "-agent")["data"]["p2p-config.yaml"])
    )
    root = parse_config(yaml.safe_load(one(docs, "ConfigMap", "-root")["data"]["p2p-config.yaml"]))
    assert agent.deploy.mode == "agent" and root.deploy.mode == "root"
    assert agent.p2p.roots == root.p2p.roots
    replicas = one(docs, "StatefulSet")["spec"]["replicas"]
    assert agent.p2p.roots == tuple(
        f"shoal-root-{i}.shoal-root.{NS}.svc:{agent.p2p.p2p_port}" for i in range(replicas)
    )
    if name == "default":
        assert agent.cache.capacity == 4294967296  # an int, not 4.294967296e+09
        assert (agent.proxy.proxy_concurrency_limit, agent.p2p.p2p_port) == (128, 65002)
        assert (agent.exporter.enable, agent.exporter.port) == (False, 65003)
        assert agent.p2p.throttle_limit_mb == 512 and agent.cache.aio_enable == 0
    else:
        assert agent.cache.capacity == 10737418240 and root.cache.capacity == 42949672960
        assert agent.p2p.p2p_port == 65012 and agent.exporter.port == 65013
        assert agent.cache.aio_enable == 1 and agent.p2p.throttle_limit_mb == 256
        assert agent.upstream.default == "docker.io"
        hosts = [r.host for r in agent.upstream.registries]
        assert "test-registry-vpc.cn-hangzhou.cr.aliyuncs.com" in hosts
        assert agent.deploy.log_audit and agent.deploy.log_audit_mode == "file"


def test_webhook_config_loads_and_matches(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    name, docs = rendered
    cm = one(docs, "ConfigMap", "-webhook")
    cfg = parse_webhook_config(yaml.safe_load(cm["data"]["webhook.yaml"]))
    assert cfg.accelerate.label_key == "k8s.aliyun.com/image-accelerate-mode"
    assert cfg.accelerate.p2p_port == 65001
    if name == "default":
        assert cfg.accelerate.registries == ()
    else:
        assert set(cfg.accelerate.registries) == {
            "test-registry-vpc.cn-hangzhou.cr.aliyuncs.com",
            "docker.io",
            "registry.internal.example.com",
            "127.0.0.1:5000",
            "*.cr.aliyuncs.com",
        }
    dep = one(docs, "Deployment", "-webhook")
    port = dep["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"]
    assert port == cfg.server.port


def test_agent_daemonset_shape(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    name, docs = rendered
    spec = one(docs, "DaemonSet")["spec"]["template"]["spec"]
    assert spec["hostNetwork"] is True and spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    agent = spec["containers"][0]
    assert agent["resources"]["limits"] == {"cpu": "1", "memory": "1Gi"}
    cache = next(v for v in spec["volumes"] if v["name"] == "cache")
    assert cache["hostPath"]["path"] == "/var/lib/shoal/cache"
    init = spec["initContainers"][0]
    assert init["command"][:2] == ["shoal", "node-setup"]
    assert "--etc-hosts=/host/etc-hosts" in init["command"]
    hosts = next(v for v in spec["volumes"] if v["name"] == "etc-hosts")
    assert hosts["hostPath"] == {"path": "/etc/hosts", "type": "File"}
    if name != "default":
        assert "--mirror=quay.io" in init["command"] and "--mirror=ghcr.io" in init["command"]
        assert {p["containerPort"] for p in agent["ports"]} == {65001, 65012, 65013}
    assert spec["automountServiceAccountToken"] is False


def test_two_webhook_entries_and_tls(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    name, docs = rendered
    mwc = one(docs, "MutatingWebhookConfiguration")
    pod, ns = mwc["webhooks"]
    label = "k8s.aliyun.com/image-accelerate-mode"
    assert pod["clientConfig"]["service"]["path"] == "/mutate/pod"
    assert pod["objectSelector"] == {"matchLabels": {label: "p2p"}}
    assert ns["clientConfig"]["service"]["path"] == "/mutate/namespace"
    assert ns["namespaceSelector"]["matchLabels"] == {label: "p2p"}
    assert ns["objectSelector"] == {
        "matchExpressions": [{"key": label, "operator": "DoesNotExist"}]
    }
    for entry in (pod, ns):
        assert entry["failurePolicy"] == "Ignore"
        assert entry["sideEffects"] == "NoneOnDryRun"
        excluded = entry["namespaceSelector"]["matchExpressions"][0]
        assert excluded["operator"] == "NotIn" and NS in excluded["values"]
        assert {r["resources"][0] for r in entry["rules"]} == {"pods", "pods/ephemeralcontainers"}

    if name == "full-cert-manager":
        assert "caBundle" not in pod["clientConfig"]
        assert mwc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == (
            f"{NS}/shoal-webhook"
        )
        cert = one(docs, "Certificate", "shoal-webhook")
        assert cert["spec"]["secretName"] == "shoal-webhook-tls"
        assert f"shoal-webhook.{NS}.svc" in cert["spec"]["dnsNames"]
        return
    # helm mode: caBundle is the CA that signed the served certificate
    secret = one(docs, "Secret", "-tls")
    ca = x509.load_pem_x509_certificate(base64.b64decode(pod["clientConfig"]["caBundle"]))
    leaf = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
    assert pod["clientConfig"]["caBundle"] == ns["clientConfig"]["caBundle"]
    assert secret["data"]["ca.crt"] == pod["clientConfig"]["caBundle"]
    leaf.verify_directly_issued_by(ca)
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert f"shoal-webhook.{NS}.svc" in sans.get_values_for_type(x509.DNSName)


def test_rbac_is_least_privilege(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    (role,) = by_kind(docs, "ClusterRole")
    assert role["rules"] == [
        {
            "apiGroups": [""],
            "resources": ["secrets"],
            "verbs": ["get", "list", "watch", "create", "update", "delete"],
        }
    ]
    assert not by_kind(docs, "Role")
    for sa in by_kind(docs, "ServiceAccount"):
        if not sa["metadata"]["name"].endswith("-webhook"):
            assert sa["automountServiceAccountToken"] is False


def test_metrics_objects(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    name, docs = rendered
    if name == "default":
        assert not by_kind(docs, "ServiceMonitor")
        return
    sm = one(docs, "ServiceMonitor")
    assert sm["spec"]["endpoints"][0]["port"] == "metrics"
    board = json.loads(one(docs, "ConfigMap", "-dashboard")["data"]["shoal-p2p.json"])
    exprs = " ".join(t["expr"] for p in board["panels"] for t in p["targets"])
    for metric in ("Alive", "Read_Throughtput", "QPS", "MaxLatency", "Count", "Cache"):
        assert f"DADIP2P_{metric}" in exprs


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("webhook.tls.mode=nope", "/webhook/tls/mode"),
        ("p2p.v2.imagetag=1", "additional properties 'imagetag' not allowed"),
        ("p2p.v2.p2pPort=70000", "/p2p/v2/p2pPort"),
    ],
)
def test_bad_values_are_refused(setting: str, message: str) -> None:
    """values.schema.json: a typo in a values file fails the install, it is not ignored."""
    with pytest.raises(subprocess.CalledProcessError) as info:
        render("--set", setting)
    assert message in info.value.stderr
