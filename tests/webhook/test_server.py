"""The real HTTPS server on loopback, called as the API server calls it.

Genuine AdmissionReviews over real TLS for a realistic set of Pods; each answer's patch
is applied with ``jsonpatch`` and the result validated as a Pod. Pull-secret clones go
to the stand-in API server and must exist before the answer arrives.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from shoal.webhook.config import (
    AccelerateConfig,
    SecretConfig,
    ServerConfig,
    WebhookConfig,
)
from shoal.webhook.controller import SecretController
from shoal.webhook.kube import KubeClient
from shoal.webhook.server import WebhookServer
from tests.webhook.checks import patched, validate_pod
from tests.webhook.fakeapi import FakeApi
from tests.webhook.pods import (
    ACR,
    ACR_P2P,
    DIGEST,
    LABEL,
    admission_review,
    container,
    deployment_pod,
)
from tests.webhook.recorded import TEST_REGISTRY, auth_entry, auths_of, dockerconfigjson
from tests.webhook.tlsfix import Tls, make_tls

ON = {LABEL: "p2p"}


class Harness:
    def __init__(self, server: WebhookServer, api: FakeApi, tls: Tls, ctl: SecretController):
        self.server, self.api, self.tls, self.controller = server, api, tls, ctl
        self.ssl = tls.client_context()

    async def post(self, path: str, body: object) -> dict[str, Any]:
        url = f"https://127.0.0.1:{self.server.port}{path}"
        async with (
            aiohttp.ClientSession() as session,
            session.post(url, data=json.dumps(body), ssl=self.ssl) as resp,
        ):
            assert resp.status == 200
            assert resp.content_type == "application/json"
            out: dict[str, Any] = await resp.json()
            return out

    async def admit(
        self, pod: dict[str, Any], path: str = "/mutate/pod", **kw: Any
    ) -> dict[str, Any]:
        review = admission_review(pod, **kw)
        answer = await self.post(path, review)
        assert answer["apiVersion"] == "admission.k8s.io/v1"
        assert answer["kind"] == "AdmissionReview"
        result = patched(review, answer)
        validate_pod(result)
        return result


def config(tls: Tls, **secrets: Any) -> WebhookConfig:
    return WebhookConfig(
        server=ServerConfig(
            listen="127.0.0.1",
            port=0,
            tls_cert_file=str(tls.cert_file),
            tls_key_file=str(tls.key_file),
            tls_reload_interval=0.1,
        ),
        accelerate=AccelerateConfig(registries=("*.cr.aliyuncs.com", "docker.io", "ghcr.io")),
        secrets=SecretConfig(**{"sync_timeout": 2.0, "resync_period": 0.5, **secrets}),
    )


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    tls = make_tls(tmp_path)
    cfg = config(tls)
    async with FakeApi() as api:
        await api.put(TEST_REGISTRY)
        await api.put(dockerconfigjson("hub", {"docker.io": auth_entry("h", "t")}))
        await api.put(dockerconfigjson("ghcr", {"ghcr.io": auth_entry("g", "t")}))
        async with (
            KubeClient(api.url, timeout=2.0) as client,
            SecretController(client, cfg.accelerate, cfg.secrets) as ctl,
            WebhookServer(cfg, ctl) as server,
        ):
            yield Harness(server, api, tls, ctl)


async def test_reference_pod_gets_rewritten_and_its_clone_first(harness: Harness) -> None:
    pod = deployment_pod(labels=ON, secrets=["test-registry"])
    out = await harness.admit(pod)
    assert out["spec"]["containers"][0]["image"] == f"{ACR_P2P}/docker-builder/nginx:latest"
    assert [s["name"] for s in out["spec"]["imagePullSecrets"]] == [
        "test-registry",
        "acr-credential-test-registry-p2p",
    ]
    # the clone exists the moment the Pod is admitted
    clone = harness.api.secrets[("default", "acr-credential-test-registry-p2p")]
    assert ACR_P2P in auths_of(clone)
    assert clone["metadata"]["ownerReferences"][0]["uid"] == TEST_REGISTRY["metadata"]["uid"]


async def test_realistic_pods(harness: Harness) -> None:
    pods = {
        "init-ephemeral-digest-short": deployment_pod(
            labels=ON,
            containers=[container("app", f"{ACR}/a/app@{DIGEST}"), container("side", "nginx:1.27")],
            init=[container("migrate", f"ghcr.io/org/migrate:v2@{DIGEST}")],
            ephemeral=[container("debug", "busybox")],
            secrets=["test-registry", "hub", "ghcr", "missing-secret"],
        ),
        "no-secrets": deployment_pod(labels=ON),
        "untouched-registries": deployment_pod(
            labels=ON,
            containers=[container("x", "localhost:5000/x:1"), container("y", "10.1.2.3/y")],
        ),
    }
    outs = {k: await harness.admit(p) for k, p in pods.items()}
    first = outs["init-ephemeral-digest-short"]
    assert (
        first["spec"]["containers"][1]["image"] == "docker.distributed.io:65001/library/nginx:1.27"
    )
    assert first["spec"]["initContainers"][0]["image"].startswith("ghcr.distributed.io:65001/")
    assert first["spec"]["ephemeralContainers"][0]["image"] == (
        "docker.distributed.io:65001/library/busybox"
    )
    assert len(first["spec"]["imagePullSecrets"]) == 8
    for name in ("test-registry", "hub", "ghcr"):
        assert ("default", f"acr-credential-{name}-p2p") in harness.api.secrets
    assert ("default", "acr-credential-missing-secret-p2p") not in harness.api.secrets
    assert outs["untouched-registries"] == pods["untouched-registries"]
    assert outs["no-secrets"]["metadata"]["annotations"][LABEL] == "p2p"


async def test_namespace_path_opt_out_and_rerun(harness: Harness) -> None:
    plain = deployment_pod(secrets=["test-registry"])
    out = await harness.admit(plain, "/mutate/namespace")
    assert out["spec"]["containers"][0]["image"].startswith(ACR_P2P)
    again = admission_review(out)
    answer = await harness.post("/mutate/namespace", again)
    assert "patch" not in answer["response"]

    opted_out = deployment_pod(labels={LABEL: "none"}, secrets=["test-registry"])
    assert await harness.admit(opted_out, "/mutate/namespace") == opted_out
    # the pod path never acts on an unlabelled Pod
    assert await harness.admit(plain, "/mutate/pod") == plain


async def test_dry_run_makes_no_secret(harness: Harness) -> None:
    before = dict(harness.api.secrets)
    out = await harness.admit(deployment_pod(labels=ON, secrets=["test-registry"]), dry_run=True)
    assert out["spec"]["containers"][0]["image"].startswith(ACR_P2P)
    assert harness.api.secrets == before


async def test_garbage_is_allowed(harness: Harness) -> None:
    url = f"https://127.0.0.1:{harness.server.port}/mutate/pod"
    async with aiohttp.ClientSession() as session:
        for data in (b"not json", b"[]", json.dumps({"request": {"uid": "u1"}}).encode()):
            async with session.post(url, data=data, ssl=harness.ssl) as resp:
                assert resp.status == 200
                body = await resp.json()
                assert body["response"]["allowed"] is True
                assert "patch" not in body["response"]
        async with session.get(url.replace("/mutate/pod", "/healthz"), ssl=harness.ssl) as r:
            assert r.status == 200


async def test_api_down_still_admits_and_retries(harness: Harness) -> None:
    harness.controller.RETRY_INTERVAL = 0.2
    harness.api.fail_with = 500
    out = await harness.admit(deployment_pod(labels=ON, secrets=["test-registry"]))
    assert out["spec"]["containers"][0]["image"].startswith(ACR_P2P)
    assert "failed: 1" in repr(harness.controller)
    harness.api.fail_with = None
    for _ in range(100):
        if ("default", "acr-credential-test-registry-p2p") in harness.api.secrets:
            break
        await asyncio.sleep(0.1)
    assert ("default", "acr-credential-test-registry-p2p") in harness.api.secrets


async def test_slow_api_does_not_hold_the_pod(tmp_path: Path) -> None:
    tls = make_tls(tmp_path)
    cfg = config(tls, sync_timeout=0.2)
    async with FakeApi() as api:
        await api.put(TEST_REGISTRY)
        api.delay = 1.0
        async with (
            KubeClient(api.url) as client,
            SecretController(client, cfg.accelerate, cfg.secrets) as ctl,
            WebhookServer(cfg, ctl) as server,
        ):
            h = Harness(server, api, tls, ctl)
            loop = asyncio.get_running_loop()
            start = loop.time()
            out = await h.admit(deployment_pod(labels=ON, secrets=["test-registry"]))
            assert loop.time() - start < 1.0
            assert out["spec"]["containers"][0]["image"].startswith(ACR_P2P)


async def test_controller_follows_source_changes(harness: Harness) -> None:
    await harness.admit(deployment_pod(labels=ON, secrets=["test-registry"]))
    key = ("default", "acr-credential-test-registry-p2p")
    src = dict(harness.api.secrets[("default", "test-registry")])
    changed = dockerconfigjson("test-registry", {ACR: auth_entry("acr-user@example", "rotated")})
    changed["metadata"]["uid"] = src["metadata"]["uid"]
    await harness.api.put(changed, "MODIFIED")
    for _ in range(100):
        if auths_of(harness.api.secrets[key]).get(ACR_P2P, {}).get("password") == "rotated":
            break
        await asyncio.sleep(0.05)
    assert auths_of(harness.api.secrets[key])[ACR_P2P]["password"] == "rotated"
    # a clone deleted by hand comes back while its source lives
    await harness.api.remove(*key)
    for _ in range(100):
        if key in harness.api.secrets:
            break
        await asyncio.sleep(0.05)
    assert key in harness.api.secrets
    # deleting the source takes the clone with it (owner reference)
    await harness.api.remove("default", "test-registry")
    await asyncio.sleep(0.3)
    assert key not in harness.api.secrets


async def test_certificate_rotation(harness: Harness) -> None:
    async def serial() -> int:
        ctx = harness.tls.client_context()
        _, writer = await asyncio.open_connection("127.0.0.1", harness.server.port, ssl=ctx)
        obj = writer.get_extra_info("ssl_object")
        assert isinstance(obj, ssl.SSLObject)
        der = obj.getpeercert(binary_form=True)
        writer.close()
        await writer.wait_closed()
        assert der is not None
        return hash(der)

    before = await serial()
    await asyncio.sleep(0.05)  # a different mtime
    harness.tls.reissue("127.0.0.1", "shoal-webhook.shoal.svc")
    for _ in range(50):
        await asyncio.sleep(0.1)
        if await serial() != before:
            break
    assert await serial() != before
