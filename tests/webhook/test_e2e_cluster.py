"""Against a real cluster: runs only when ``KUBECONFIG`` is set, skipped otherwise.

1. The pull-secret controller with the real API server: a clone is made with an owner
   reference, follows a change of its source, and the garbage collector removes it when
   the source goes.
2. With ``SHOAL_E2E_IMAGE`` also set (an image built from the Dockerfile that the
   cluster can pull) and Helm installed: the chart is installed, a namespace labelled,
   and a Pod created with server-side dry run, which runs the real admission chain and
   shows the rewritten Pod without creating it.

Everything is made in a namespace of its own, deleted at the end.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest

from shoal.webhook.config import AccelerateConfig, SecretConfig
from shoal.webhook.controller import SecretController
from shoal.webhook.kube import KubeClient
from shoal.webhook.types import Secret
from tests.webhook.checks import validate_pod
from tests.webhook.recorded import ACR, ACR_P2P, auth_entry, auths_of, dockerconfigjson

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not os.environ.get("KUBECONFIG"), reason="KUBECONFIG is not set"),
]
CHART = Path(__file__).resolve().parents[2] / "deploy" / "helm" / "shoal"
LABEL = "k8s.aliyun.com/image-accelerate-mode"


@pytest.fixture
async def kube() -> AsyncIterator[KubeClient]:
    path = os.environ["KUBECONFIG"].split(os.pathsep)[0]
    async with await KubeClient.from_kubeconfig(path) as client:
        yield client


@pytest.fixture
async def namespace(kube: KubeClient) -> AsyncIterator[str]:
    name = f"shoal-e2e-{uuid.uuid4().hex[:8]}"
    body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
    await kube._call("POST", "/api/v1/namespaces", body=body)
    try:
        yield name
    finally:
        await kube._call("DELETE", f"/api/v1/namespaces/{name}", allow_404=True)


async def _until(check: Any, seconds: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not await check():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.5)


async def test_secret_clones_with_the_real_api(kube: KubeClient, namespace: str) -> None:
    src = dockerconfigjson("test-registry", {ACR: auth_entry("u", "p")}, namespace=namespace)
    for key in ("uid", "resourceVersion", "creationTimestamp", "managedFields"):
        src["metadata"].pop(key)
    created = await kube.create_secret(namespace, cast(Secret, src))
    cfg = AccelerateConfig(registries=("*.cr.aliyuncs.com",))
    ctl = SecretController(kube, cfg, SecretConfig(resync_period=2))
    assert await ctl.ensure(namespace, ["test-registry"]) == []
    clone = await kube.get_secret(namespace, "acr-credential-test-registry-p2p")
    assert clone is not None
    assert auths_of(dict(clone)) == {ACR_P2P: auth_entry("u", "p")}
    assert clone["metadata"]["ownerReferences"][0]["uid"] == created["metadata"]["uid"]

    async with ctl:
        changed = dict(created)
        changed["data"] = dockerconfigjson("x", {ACR: auth_entry("u", "new")})["data"]
        await kube.replace_secret(namespace, "test-registry", cast(Secret, changed))

        async def updated() -> bool:
            c = await kube.get_secret(namespace, "acr-credential-test-registry-p2p")
            return c is not None and auths_of(dict(c))[ACR_P2P]["password"] == "new"

        await _until(updated)

    await kube.delete_secret(namespace, "test-registry")

    async def collected() -> bool:
        return await kube.get_secret(namespace, "acr-credential-test-registry-p2p") is None

    await _until(collected, 60)


@pytest.mark.skipif(not os.environ.get("SHOAL_E2E_IMAGE"), reason="SHOAL_E2E_IMAGE is not set")
async def test_chart_and_webhook_in_the_cluster(kube: KubeClient, namespace: str) -> None:
    helm = shutil.which("helm")
    if not helm:
        pytest.skip("helm is not installed")
    image, _, tag = os.environ["SHOAL_E2E_IMAGE"].rpartition(":")
    release = namespace
    await asyncio.to_thread(
        subprocess.run,
        [
            helm, "install", release, str(CHART), "--namespace", namespace, "--wait",
            "--timeout", "5m",
            "--set", f"p2p.v2.image={image}", "--set", f"p2p.v2.imageTag={tag}",
            "--set", f"upstream.registries[0].host={ACR}",
            "--set", "root.replicas=1", "--set", "webhook.replicas=1",
        ],
        check=True,
        timeout=400,
    )  # fmt: skip
    app_ns = f"{namespace}-app"
    body = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": app_ns, "labels": {LABEL: "p2p"}},
    }
    await kube._call("POST", "/api/v1/namespaces", body=body)
    try:
        src = dockerconfigjson("test-registry", {ACR: auth_entry("u", "p")}, namespace=app_ns)
        for key in ("uid", "resourceVersion", "creationTimestamp", "managedFields"):
            src["metadata"].pop(key)
        await kube.create_secret(app_ns, cast(Secret, src))
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"generateName": "e2e-"},
            "spec": {
                "imagePullSecrets": [{"name": "test-registry"}],
                "containers": [{"name": "c", "image": f"{ACR}/docker-builder/nginx:latest"}],
            },
        }
        got = await kube._call(
            "POST", f"/api/v1/namespaces/{app_ns}/pods", params={"dryRun": "All"}, body=pod
        )
        assert got is not None
        validate_pod(json.loads(json.dumps(got)))
        assert got["spec"]["containers"][0]["image"] == f"{ACR_P2P}/docker-builder/nginx:latest"
        assert got["metadata"]["annotations"][LABEL] == "p2p"
        names = [s["name"] for s in got["spec"]["imagePullSecrets"]]
        assert names == ["test-registry", "acr-credential-test-registry-p2p"]
        # dry run: the webhook made no clone (sideEffects: NoneOnDryRun)
        assert await kube.get_secret(app_ns, "acr-credential-test-registry-p2p") is None
    finally:
        await kube._call("DELETE", f"/api/v1/namespaces/{app_ns}", allow_404=True)
        await asyncio.to_thread(
            subprocess.run, [helm, "uninstall", release, "--namespace", namespace], timeout=120
        )
