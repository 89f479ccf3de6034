"""The Helm chart, rendered by a real Helm binary and checked object by object.

Every built-in object must pass ``kubernetes-validate`` (strict: unknown fields are
errors) for the oldest and newest Kubernetes the chart is tested against; objects of
CRDs the validator has no schema for (cert-manager, Prometheus operator) get a
structural check. The config files in the ConfigMaps are parsed by shoal's own config
loaders, so a key the programs would refuse never ships in the chart. What the rendered
manifests do when run is tests/cluster's; here is what they say.

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
    ("monitoring.coreos.com/v1", "PrometheusRule"),
}


def helm() -> str:
    found = os.environ.get("SHOAL_HELM") or shutil.which("helm")
    if not found:
        if os.environ.get("CI"):
            pytest.fail("helm is missing: scripts/install-helm.sh should have installed it")
        pytest.skip("helm is not installed (bash scripts/install-helm.sh)")
    return found


def render_text(*args: str) -> str:
    return subprocess.run(
        [helm(), "template", "shoal", str(CHART), "--namespace", NS, *args],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout


def render(*args: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(render_text(*args)) if d]


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


def mount(pod: dict[str, Any], volume: str) -> tuple[str, dict[str, Any]] | None:
    """(mountPath, the volume's secret source) of ``volume`` in the first container."""
    mounts = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == volume]
    if not mounts:
        assert not [v for v in pod["volumes"] if v["name"] == volume]
        return None
    (m,) = mounts
    (vol,) = [v for v in pod["volumes"] if v["name"] == volume]
    assert m["readOnly"] is True
    return m["mountPath"], vol["secret"]


def one(docs: list[dict[str, Any]], kind: str, suffix: str = "") -> dict[str, Any]:
    found = [d for d in by_kind(docs, kind) if d["metadata"]["name"].endswith(suffix)]
    assert len(found) == 1, (kind, suffix, [d["metadata"]["name"] for d in found])
    return found[0]


@pytest.mark.parametrize("name", sorted(RENDERS))
def test_two_renders_are_byte_identical(name: str) -> None:
    """No secret or key is generated at render time: GitOps tools render on every sync
    and would otherwise rotate the cluster secret and the webhook CA each time."""
    assert render_text(*RENDERS[name]) == render_text(*RENDERS[name])


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
    sts = one(docs, "StatefulSet")
    replicas = sts["spec"]["replicas"]
    domain = "cluster.local" if name == "default" else "k8s.example.internal"
    # a root serves agents on its control port (ProxyConfig.port), not its peer port
    assert agent.p2p.roots == tuple(
        f"shoal-root-{i}.shoal-root.{NS}.svc.{domain}:{root.proxy.port}" for i in range(replicas)
    )
    ports = {
        p["name"]: p["containerPort"]
        for p in sts["spec"]["template"]["spec"]["containers"][0]["ports"]
    }
    assert ports["control"] == root.proxy.port != root.p2p.p2p_port == ports["p2p"]
    svc = one(docs, "Service", "-root")
    assert {p["name"]: p["port"] for p in svc["spec"]["ports"]}["control"] == root.proxy.port
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
    assert spec["priorityClassName"] == "system-node-critical"
    assert spec["nodeSelector"] == {"kubernetes.io/os": "linux"}
    agent = spec["containers"][0]
    # small requests, a memory limit, no CPU limit (docs/install.md, "Footprint")
    assert set(agent["resources"]["requests"]) == {"cpu", "memory"}
    assert set(agent["resources"]["limits"]) == {"memory"}
    # peers dial the node's own address, from the downward API
    assert agent["command"][-1] == "--advertise=$(NODE_IP)"
    env = {e["name"]: e for e in agent["env"]}
    assert env["NODE_IP"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.hostIP"}}
    # HTTP probes on the mirror port: a hung agent still accepts TCP connections
    for probe, path in (
        ("startupProbe", "/healthz"),
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
    ):
        assert agent[probe]["httpGet"] == {"path": path, "port": "proxy"}, probe
    assert agent["livenessProbe"]["terminationGracePeriodSeconds"] == 2
    cache = next(v for v in spec["volumes"] if v["name"] == "cache")
    assert cache["hostPath"]["path"] == "/var/lib/shoal/cache"
    init = spec["initContainers"][0]
    assert init["command"][:2] == ["shoal", "node-setup"]
    assert "--etc-hosts=/host/etc-hosts" in init["command"]
    hosts = next(v for v in spec["volumes"] if v["name"] == "etc-hosts")
    assert hosts["hostPath"] == {"path": "/etc/hosts", "type": "File"}
    image = agent["image"]
    if name == "default":
        assert image == "ghcr.io/shoal-project/shoal:0.1.0" and len(spec["containers"]) == 1
        return
    assert image == "registry.example.com/platform/shoal@sha256:" + "0123456789abcdef" * 4
    assert "--mirror=quay.io" in init["command"] and "--mirror=ghcr.io" in init["command"]
    k3s = "/var/lib/rancher/k3s/agent/etc/containerd"
    assert f"--host-path={k3s}/certs.d" in init["command"]
    assert (
        next(v for v in spec["volumes"] if v["name"] == "hosts-dir")["hostPath"]["path"]
        == f"{k3s}/certs.d"
    )
    keeper = spec["containers"][1]  # k3s empties certs.d at each start: written again
    assert keeper["name"] == "node-setup-keeper" and keeper["command"][-1] == "--every=30"
    assert {p["containerPort"] for p in agent["ports"]} == {65001, 65012, 65013}
    assert {"name": "SHOAL_LOG", "value": "debug"} in agent["env"]
    assert any(m["name"] == "internal-ca" for m in agent["volumeMounts"])
    assert any(v["name"] == "internal-ca" for v in spec["volumes"])
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
    # hook mode: no key and no CA in the render; the bootstrap Jobs make the certificate
    # once (pre-install) and write its CA into caBundle (post-install)
    assert not by_kind(docs, "Secret")
    assert "caBundle" not in pod["clientConfig"] and "caBundle" not in ns["clientConfig"]
    jobs = {j["metadata"]["annotations"]["helm.sh/hook"]: j for j in by_kind(docs, "Job")}
    make = jobs["pre-install,pre-upgrade"]["spec"]["template"]["spec"]["containers"][0]
    assert make["command"] == ["python", "-m", "shoal.webhook.bootstrap", "secrets"]
    assert (
        "--tls-secret=shoal-webhook-tls" in make["args"]
        and "--service=shoal-webhook" in make["args"]
    )
    # after Helm applied the release: the same Secrets again (an upgrade from a chart
    # that rendered them has just deleted them), then the CA into the configuration
    again = jobs["post-install,post-upgrade"]["spec"]["template"]["spec"]["containers"][0]
    assert again["command"] == make["command"]
    assert again["args"] == [*make["args"], "--webhook-configuration=shoal-webhook"]


def test_the_control_api_runs_over_tls_with_the_clusters_ca(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    """Agents verify roots with the CA at the path their config names, from a volume
    holding nothing else (no key on the nodes); roots serve the certificate and key at
    theirs, and the kubelet probes them over HTTPS. The Secret comes from the hook
    Job, or from cert-manager, with names covering every StatefulSet member."""
    name, docs = rendered
    agent_cfg = parse_config(
        yaml.safe_load(one(docs, "ConfigMap", "-agent")["data"]["p2p-config.yaml"])
    )
    root_cfg = parse_config(
        yaml.safe_load(one(docs, "ConfigMap", "-root")["data"]["p2p-config.yaml"])
    )
    assert agent_cfg.control.tls and root_cfg.control.tls

    def mounted(pod: dict[str, Any], volume: str) -> tuple[str, dict[str, Any]]:
        found = mount(pod, volume)
        assert found is not None, volume
        return found

    agent = one(docs, "DaemonSet")["spec"]["template"]["spec"]
    path, secret = mounted(agent, "control-ca")
    assert secret["secretName"] == "shoal-control-tls"
    assert secret["items"] == [{"key": "ca.crt", "path": "ca.crt"}]
    assert agent_cfg.control.ca_file == f"{path}/ca.crt"
    root = one(docs, "StatefulSet")["spec"]["template"]["spec"]
    path, secret = mounted(root, "control-tls")
    assert secret["secretName"] == "shoal-control-tls"
    assert {i["path"] for i in secret["items"]} == {"ca.crt", "tls.crt", "tls.key"}
    assert (root_cfg.control.cert_file, root_cfg.control.key_file) == (
        f"{path}/tls.crt",
        f"{path}/tls.key",
    )
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert root["containers"][0][probe]["httpGet"]["scheme"] == "HTTPS"

    domain = "cluster.local" if name == "default" else "k8s.example.internal"
    if name == "full-cert-manager":
        cert = one(docs, "Certificate", "shoal-control")
        assert cert["spec"]["secretName"] == "shoal-control-tls"
        assert f"*.shoal-root.{NS}.svc.{domain}" in cert["spec"]["dnsNames"]
        assert f"*.shoal-root.{NS}.svc" in cert["spec"]["dnsNames"]
        # a CA of its own, not the webhook's
        assert cert["spec"]["issuerRef"]["name"] == "shoal-control-ca"
        assert one(docs, "Certificate", "shoal-control-ca")["spec"]["isCA"] is True
        return
    assert not by_kind(docs, "Certificate")
    jobs = [j["spec"]["template"]["spec"]["containers"][0]["args"] for j in by_kind(docs, "Job")]
    assert len(jobs) == 2
    for job_args in jobs:
        assert "--control-secret=shoal-control-tls" in job_args
        assert "--control-service=shoal-root" in job_args
        assert f"--cluster-domain={domain}" in job_args


def test_the_plain_development_mode_is_explicit_and_loud() -> None:
    docs = render("--set", "control.tls.enabled=false")
    for suffix in ("-agent", "-root"):
        cfg = parse_config(
            yaml.safe_load(one(docs, "ConfigMap", suffix)["data"]["p2p-config.yaml"])
        )
        assert cfg.control.tls is False
    text = render_text("--set", "control.tls.enabled=false")
    assert "control-ca" not in text and "control-tls" not in text
    root = one(docs, "StatefulSet")["spec"]["template"]["spec"]["containers"][0]
    assert root["readinessProbe"]["httpGet"].get("scheme", "HTTP") == "HTTP"
    dry_run = [helm(), "install", "shoal", str(CHART), "--dry-run", "--namespace", NS]
    notes = subprocess.run(
        [*dry_run, "--set", "control.tls.enabled=false"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    assert "PLAIN HTTP" in notes


def test_the_control_secret_can_be_brought() -> None:
    docs = render("--set", "control.tls.mode=secret", "--set", "control.tls.secretName=mine")
    agent = one(docs, "DaemonSet")["spec"]["template"]["spec"]
    (vol,) = [v for v in agent["volumes"] if v["name"] == "control-ca"]
    assert vol["secret"]["secretName"] == "mine"
    args = [
        a
        for j in by_kind(docs, "Job")
        for a in j["spec"]["template"]["spec"]["containers"][0]["args"]
    ]
    assert not [a for a in args if a.startswith("--control-")]
    with pytest.raises(subprocess.CalledProcessError) as info:
        render("--set", "control.tls.mode=secret")
    assert "control.tls.secretName is required" in info.value.stderr


def test_rbac_is_least_privilege(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    name, docs = rendered
    roles = {r["metadata"]["name"]: r["rules"] for r in by_kind(docs, "ClusterRole")}
    # exactly the calls shoal/webhook/kube.py makes for the pull-secret controller
    assert roles.pop("shoal-webhook") == [
        {
            "apiGroups": [""],
            "resources": ["secrets"],
            "verbs": ["get", "list", "watch", "create", "update", "delete"],
        }
    ]
    local = {r["metadata"]["name"]: r["rules"] for r in by_kind(docs, "Role")}
    if name == "full-cert-manager":
        # cert-manager makes the certificate; the cluster secret is an existing one
        assert not roles and not local and not by_kind(docs, "Job")
    elif name == "full":
        # the certificates are the hook's; the cluster secret is an existing one
        assert local["shoal-bootstrap"][0]["resourceNames"] == [
            "shoal-webhook-tls",
            "shoal-control-tls",
        ]
    else:
        assert local["shoal-bootstrap"][0] == {
            "apiGroups": [""],
            "resources": ["secrets"],
            "resourceNames": ["shoal-p2p", "shoal-webhook-tls", "shoal-control-tls"],
            "verbs": ["get"],
        }
    if name != "full-cert-manager":
        # both phases may get and create the same Secrets
        assert local["shoal-bootstrap-post"] == local["shoal-bootstrap"]
        assert local["shoal-bootstrap"][1] == {
            "apiGroups": [""],
            "resources": ["secrets"],
            "verbs": ["create"],
        }
        # the CA goes into one webhook configuration, named
        assert roles.pop("shoal-bootstrap-post") == [
            {
                "apiGroups": ["admissionregistration.k8s.io"],
                "resources": ["mutatingwebhookconfigurations"],
                "resourceNames": ["shoal-webhook"],
                "verbs": ["get", "patch"],
            }
        ]
    assert not roles
    for sa in by_kind(docs, "ServiceAccount"):
        if not sa["metadata"]["name"].endswith(("-webhook", "-bootstrap", "-bootstrap-post")):
            assert sa["automountServiceAccountToken"] is False


def test_bootstrap_hooks_are_ordered_and_cleaned_up(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, docs = rendered
    for doc in docs:
        notes = doc["metadata"].get("annotations") or {}
        if "helm.sh/hook" not in notes:
            continue
        assert doc["metadata"]["name"].startswith("shoal-bootstrap")
        assert notes["helm.sh/hook-delete-policy"] == "before-hook-creation,hook-succeeded"
        # ServiceAccount and RBAC before the Job that uses them
        assert notes["helm.sh/hook-weight"] == ("0" if doc["kind"] == "Job" else "-10")


def test_root_disruption_budget(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    name, docs = rendered
    pdb = one(docs, "PodDisruptionBudget", "-root")
    assert pdb["spec"]["maxUnavailable"] == (1 if name == "default" else 2)
    assert pdb["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "root"
    policies = by_kind(docs, "NetworkPolicy")
    if name == "default":
        assert not policies
        return
    root = one(docs, "NetworkPolicy", "-root")
    ports = {p["port"] for p in root["spec"]["ingress"][0]["ports"]}
    assert ports == {65001, 65012, 65013}
    assert root["spec"]["ingress"][0]["from"] == [{"ipBlock": {"cidr": "10.0.0.0/16"}}]


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
    for metric in ("shoal_origin_fallback_total", "shoal_root_reachable"):
        assert metric in exprs
    rule = one(docs, "PrometheusRule")
    alerts = {r["alert"]: r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]}
    assert "shoal_origin_fallback_total" in alerts["ShoalOriginFallbacks"]
    assert "shoal_root_reachable" in alerts["ShoalNoRoot"]


def test_alert_rules_pass_promtool(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package prometheus)")
    docs = render(*RENDERS["full"])
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(one(docs, "PrometheusRule")["spec"]))
    done = subprocess.run(
        [promtool, "check", "rules", str(rules)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("webhook.tls.mode=nope", "/webhook/tls/mode"),
        ("control.tls.mode=nope", "/control/tls/mode"),
        ("p2p.v2.imagetag=1", "additional properties 'imagetag' not allowed"),
        ("p2p.v2.p2pPort=70000", "/p2p/v2/p2pPort"),
        ("imagePullPolicy=Always", "additional properties 'imagePullPolicy' not allowed"),
        ("image.digest=latest", "/image/digest"),
        ("preheat.enable=true", "additional properties 'enable' not allowed"),
        ("preheat.resyncPeriod=0", "/preheat/resyncPeriod"),
        ("preheat.ttl=-1", "/preheat/ttl"),
        ("preheat.rate=-1", "/preheat/rate"),
    ],
)
def test_bad_values_are_refused(setting: str, message: str) -> None:
    """values.schema.json: a typo in a values file fails the install, it is not ignored."""
    with pytest.raises(subprocess.CalledProcessError) as info:
        render("--set", setting)
    assert message in info.value.stderr


def test_the_webhook_may_write_only_its_clones() -> None:
    """On Kubernetes 1.30+ a ValidatingAdmissionPolicy confines the webhook's Secret
    writes to the clones it manages, which RBAC cannot express. Its CEL, evaluated
    here with cel-python against what the API server would hand it (no API server can
    run here): the webhook's real clones pass, anything else is refused."""
    import celpy
    from celpy.adapter import json_to_cel

    from shoal.webhook.config import AccelerateConfig
    from shoal.webhook.pullsecrets import desired_clone

    docs = render("--api-versions", "admissionregistration.k8s.io/v1/ValidatingAdmissionPolicy")
    policy = one(docs, "ValidatingAdmissionPolicy")
    binding = one(docs, "ValidatingAdmissionPolicyBinding")
    assert binding["spec"] == {
        "policyName": policy["metadata"]["name"],
        "validationActions": ["Deny"],
    }
    for version in ("1.30.0", "1.33.0"):
        kubernetes_validate.validate(policy, version, strict=True)
        kubernetes_validate.validate(binding, version, strict=True)
    env = celpy.Environment()

    def run(expr: str, activation: dict[str, Any]) -> bool:
        names = {k: json_to_cel(v) for k, v in activation.items()}
        return bool(env.program(env.compile(expr)).evaluate(names))

    (condition,) = policy["spec"]["matchConditions"]
    (rule,) = policy["spec"]["validations"]
    webhook = f"system:serviceaccount:{NS}:shoal-webhook"
    for user, applies in ((webhook, True), ("system:serviceaccount:kube-system:generic-gc", False)):
        assert (
            run(condition["expression"], {"request": {"userInfo": {"username": user}}}) is applies
        )

    source = {
        "metadata": {"name": "regcred", "namespace": "apps", "uid": "u1", "resourceVersion": "7"},
        "type": "kubernetes.io/dockerconfigjson",
        "data": {
            ".dockerconfigjson": base64.b64encode(
                b'{"auths": {"r.example.com": {"auth": "eDp5"}}}'
            ).decode()
        },
    }
    clone = desired_clone(source, AccelerateConfig(registries=("r.example.com",)))  # type: ignore[arg-type]
    assert clone is not None
    foreign = {"metadata": {"name": "db-password", "namespace": "apps", "labels": {"app": "db"}}}
    claimed = {
        "metadata": {**foreign["metadata"], "labels": {"app.kubernetes.io/managed-by": "shoal"}}
    }
    fake = {"metadata": {"name": "acr-credential-db-p2p", "namespace": "apps"}}

    def allowed(op: str, new: object, old: object) -> bool:
        return run(
            rule["expression"], {"request": {"operation": op}, "object": new, "oldObject": old}
        )

    assert allowed("CREATE", clone, None)
    assert allowed("UPDATE", clone, clone)
    assert allowed("DELETE", None, clone)
    assert not allowed("CREATE", foreign, None)
    assert not allowed("CREATE", fake, None)  # the name alone is not enough
    assert not allowed("CREATE", claimed, None)  # nor the label alone
    assert not allowed("UPDATE", foreign, foreign)
    assert not allowed("UPDATE", claimed, foreign)  # no taking a Secret over by labelling it
    taken = {"metadata": {**fake["metadata"], "labels": {"app.kubernetes.io/managed-by": "shoal"}}}
    assert allowed("CREATE", taken, None)  # shaped like a clone, made as one: fine
    assert not allowed("UPDATE", taken, fake)  # but not by relabelling someone's Secret
    assert not allowed("DELETE", None, foreign)


# --- preheat (docs/preheat.md, "Kubernetes") -------------------------------------------

PREHEAT_ON = ("--set", "preheat.enabled=true")
PREHEAT_RENDERS = {
    "on": PREHEAT_ON,
    "on-full": (
        "-f", str(FULL), "--set-json",
        'preheat={"enabled": true, "resyncPeriod": 30, "ttl": 7200, "rate": 12.5}',
    ),
    "on-full-cert-manager": (
        "-f", str(FULL), *PREHEAT_ON, "--api-versions", "cert-manager.io/v1",
        "--api-versions", "monitoring.coreos.com/v1",
    ),
    "on-existing-secret": (*PREHEAT_ON, "--set", "preheat.existingSecret=ops-preheat"),
    "on-plain": (*PREHEAT_ON, "--set", "control.tls.enabled=false"),
    "on-no-clones": (*PREHEAT_ON, "--set", "webhook.secrets.enable=false"),
}  # fmt: skip


@pytest.fixture(scope="module", params=sorted(PREHEAT_RENDERS))
def preheat_rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    name: str = request.param
    return name, render(*PREHEAT_RENDERS[name])


def readable_by(pod: dict[str, Any], secret: dict[str, Any]) -> bool:
    """Can the container's user read the Secret's files? The kubelet makes them owned by
    root, with the group ``fsGroup`` when the Pod sets one."""
    mode = int(secret.get("defaultMode", 0o644))
    uid = pod["containers"][0]["securityContext"]["runAsUser"]
    if uid == 0 or mode & 0o004:
        return True
    return bool(mode & 0o040) and "fsGroup" in (pod.get("securityContext") or {})


def test_preheat_is_off_by_default_and_leaves_no_trace() -> None:
    """Off (the default): not a key, mount, rule or argument of it in the render."""
    text = render_text()
    assert "preheat" not in text.lower()
    webhook = parse_webhook_config(
        yaml.safe_load(one(render(), "ConfigMap", "-webhook")["data"]["webhook.yaml"])
    )
    assert webhook.preheat.enable is False


@pytest.mark.parametrize("name", sorted(PREHEAT_RENDERS))
def test_preheat_renders_are_byte_identical_and_valid(name: str) -> None:
    """The operator credential comes from the hook Job, never from the template."""
    text = render_text(*PREHEAT_RENDERS[name])
    assert text == render_text(*PREHEAT_RENDERS[name])
    for doc in (d for d in yaml.safe_load_all(text) if d):
        if (doc["apiVersion"], doc["kind"]) in CRD_KINDS:
            continue
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)
    assert not [d for d in yaml.safe_load_all(text) if d and d["kind"] == "Secret"]


def test_helm_lint_with_preheat() -> None:
    for extra in (PREHEAT_ON, ("-f", str(FULL), *PREHEAT_ON)):
        done = subprocess.run(
            [helm(), "lint", "--strict", str(CHART), *extra],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stdout + done.stderr


def test_preheat_wires_the_roots_and_the_webhook_with_the_keys_the_code_reads(
    preheat_rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    """Each config parsed by shoal's own loader; each file it names is a mount of the
    Secret that holds it, readable by the container's user."""
    name, docs = preheat_rendered
    secret_name = "ops-preheat" if name == "on-existing-secret" else "shoal-preheat"
    agent_cfg = parse_config(
        yaml.safe_load(one(docs, "ConfigMap", "-agent")["data"]["p2p-config.yaml"])
    )
    root_cfg = parse_config(
        yaml.safe_load(one(docs, "ConfigMap", "-root")["data"]["p2p-config.yaml"])
    )
    webhook_cfg = parse_webhook_config(
        yaml.safe_load(one(docs, "ConfigMap", "-webhook")["data"]["webhook.yaml"])
    )

    # the roots (the job API, signed with it) and the webhook (an operator) mount the
    # operator credential where their configs look for it
    pcfg = webhook_cfg.preheat
    root = one(docs, "StatefulSet")["spec"]["template"]["spec"]
    hook = one(docs, "Deployment", "-webhook")["spec"]["template"]["spec"]
    for pod, secret_file in ((root, root_cfg.preheat.secret_file), (hook, pcfg.secret_file)):
        found = mount(pod, "preheat-secret")
        assert found is not None
        path, secret = found
        assert secret["secretName"] == secret_name
        assert secret["items"] == [{"key": "secret", "path": "secret"}]
        assert secret_file == f"{path}/secret"
        assert readable_by(pod, secret)

    # the webhook: the agents' root list, the roots' CA
    assert pcfg.enable is True
    assert pcfg.roots == agent_cfg.p2p.roots == root_cfg.p2p.roots
    ca = mount(hook, "control-ca")
    if name == "on-plain":
        assert pcfg.tls is False and ca is None and not root_cfg.control.tls
    else:
        assert ca is not None
        assert pcfg.tls is True and pcfg.tls == root_cfg.control.tls
        assert pcfg.ca_file == f"{ca[0]}/ca.crt" and ca[1]["secretName"] == "shoal-control-tls"
        assert ca[1]["items"] == [{"key": "ca.crt", "path": "ca.crt"}]  # no key
        assert readable_by(hook, ca[1])
    if name == "on-full":
        assert (pcfg.resync_period, pcfg.ttl, pcfg.rate) == (30, 7200, 12.5)
    else:
        assert (pcfg.resync_period, pcfg.ttl, pcfg.rate) == (15, 0, 0)

    # the nodes never hold it: no mount, no mention in their config
    agent = one(docs, "DaemonSet")["spec"]["template"]["spec"]
    assert mount(agent, "preheat-secret") is None
    assert not agent_cfg.preheat.secret_file and not agent_cfg.preheat.secret
    assert secret_name not in yaml.safe_dump(one(docs, "DaemonSet"))

    # made once by the hook Jobs unless it was brought
    jobs = [j["spec"]["template"]["spec"]["containers"][0]["args"] for j in by_kind(docs, "Job")]
    local = {r["metadata"]["name"]: r["rules"] for r in by_kind(docs, "Role")}
    if name == "on-existing-secret":
        assert not [a for args in jobs for a in args if a.startswith("--preheat-secret")]
    else:
        assert len(jobs) == 2
        for args in jobs:
            assert f"--preheat-secret={secret_name}" in args
        for role in ("shoal-bootstrap", "shoal-bootstrap-post"):
            assert secret_name in local[role][0]["resourceNames"]


def test_preheat_rbac_is_exactly_what_the_preheater_calls(
    preheat_rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    """The resources come from the code's own table (``workloads.KINDS``) and the paths
    ``preheater.py`` lists: nodes and namespaces; one workload kind per KINDS entry; a
    workload's pull secrets by name; core/v1 Events (``kube.create_event``)."""
    from shoal.webhook.workloads import KINDS

    name, docs = preheat_rendered
    roles = {r["metadata"]["name"]: r["rules"] for r in by_kind(docs, "ClusterRole")}
    kinds = [path.rsplit("/", 1)[1] for path in KINDS.values()]
    assert all(path.startswith("/apis/apps/v1/") for path in KINDS.values())
    assert roles["shoal-webhook-preheat"] == [
        {"apiGroups": [""], "resources": ["nodes", "namespaces"], "verbs": ["list"]},
        {"apiGroups": ["apps"], "resources": kinds, "verbs": ["list"]},
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
    ]
    if name == "on-no-clones":
        assert "shoal-webhook" not in roles  # the clone controller's role is not needed
    else:
        assert roles["shoal-webhook"][0]["resources"] == ["secrets"]
    (binding,) = [
        b
        for b in by_kind(docs, "ClusterRoleBinding")
        if b["metadata"]["name"] == "shoal-webhook-preheat"
    ]
    assert binding["roleRef"]["name"] == "shoal-webhook-preheat"
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "shoal-webhook", "namespace": NS}
    ]
    sa = one(docs, "ServiceAccount", "-webhook")
    assert sa["automountServiceAccountToken"] is True  # the preheater calls the API
    # the roots' token stays unmounted: they call no API
    assert (
        one(docs, "StatefulSet")["spec"]["template"]["spec"]["automountServiceAccountToken"]
        is False
    )


def test_preheat_through_network_policies() -> None:
    """With the roots open only to the nodes' CIDRs, the webhook's Pods may still reach
    their control port (the job API), and nothing more."""
    docs = render("-f", str(FULL), *PREHEAT_ON)
    ingress = one(docs, "NetworkPolicy", "-root")["spec"]["ingress"]
    assert ingress[0]["from"] == [{"ipBlock": {"cidr": "10.0.0.0/16"}}]
    assert ingress[1] == {
        "ports": [{"port": 65001, "protocol": "TCP"}],
        "from": [
            {
                "podSelector": {
                    "matchLabels": {
                        "app.kubernetes.io/name": "shoal",
                        "app.kubernetes.io/instance": "shoal",
                        "app.kubernetes.io/component": "webhook",
                    }
                }
            }
        ],
    }
    assert len(one(render("-f", str(FULL)), "NetworkPolicy", "-root")["spec"]["ingress"]) == 1
