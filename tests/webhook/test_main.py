"""``shoal webhook`` as a process: kubeconfig, real TLS, a clone made, SIGTERM ends it."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from shoal.lab.ports import free_port
from tests.webhook.checks import patched, validate_pod
from tests.webhook.fakeapi import FakeApi
from tests.webhook.pods import ACR_P2P, LABEL, admission_review, deployment_pod
from tests.webhook.recorded import TEST_REGISTRY
from tests.webhook.tlsfix import make_tls


@pytest.fixture
async def api() -> AsyncIterator[FakeApi]:
    async with FakeApi() as fake:
        await fake.put(TEST_REGISTRY)
        yield fake


async def test_process_serves_until_sigterm(tmp_path: Path, api: FakeApi) -> None:
    tls = make_tls(tmp_path)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": api.url}}],
                "users": [{"name": "u", "user": {"token": "t0ken"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    port = free_port()
    config = tmp_path / "webhook.yaml"
    config.write_text(
        f"ServerConfig:\n  listen: 127.0.0.1\n  port: {port}\n"
        f"  tlsCertFile: {tls.cert_file}\n  tlsKeyFile: {tls.key_file}\n"
        f'AccelerateConfig:\n  registries: ["*.cr.aliyuncs.com"]\n'
        f"SecretConfig:\n  kubeconfig: {kubeconfig}\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "shoal",
        "webhook",
        "--config",
        str(config),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        review = admission_review(deployment_pod(labels={LABEL: "p2p"}, secrets=["test-registry"]))
        answer = None
        async with aiohttp.ClientSession() as session:
            for _ in range(100):
                try:
                    async with session.post(
                        f"https://127.0.0.1:{port}/mutate/pod",
                        json=review,
                        ssl=tls.client_context(),
                    ) as resp:
                        answer = await resp.json()
                        break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.1)
        assert answer is not None, "webhook did not come up"
        pod = patched(review, answer)
        validate_pod(pod)
        assert pod["spec"]["containers"][0]["image"].startswith(ACR_P2P)
        assert ("default", "acr-credential-test-registry-p2p") in api.secrets
        assert "Bearer t0ken" in api.authorization
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        out, _ = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, out.decode()
    log = out.decode()
    assert "rewrote 1 image(s)" in log
    assert "clone default/acr-credential-test-registry-p2p: create" in log
