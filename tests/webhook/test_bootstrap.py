"""The chart's bootstrap Job: secrets made once, the CA written into the webhook config.

Against the stand-in API server over real TLS (tests/cluster/apiserver.py): the first
run creates, a second run changes nothing (a GitOps sync, a ``helm upgrade``), and the
certificate it made is one a client trusting the CA accepts for the Service's name.
"""

from __future__ import annotations

import argparse
import base64
import ssl
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trustme
from cryptography import x509

from shoal.webhook.bootstrap import ca_patch, execute
from shoal.webhook.kube import KubeClient
from tests.cluster.apiserver import ApiServer

NS = "shoal-system"


@pytest.fixture
async def api() -> AsyncIterator[tuple[ApiServer, KubeClient]]:
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    async with ApiServer("127.0.0.1", server_ctx) as server:
        server.tokens["job-token"] = "shoal-system:shoal-bootstrap"
        server.apply(
            {
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": "MutatingWebhookConfiguration",
                "metadata": {"name": "shoal-webhook"},
                "webhooks": [
                    {"name": "pod.p2p.shoal.io", "clientConfig": {"service": {"name": "x"}}},
                    {"name": "namespace.p2p.shoal.io", "clientConfig": {"service": {"name": "x"}}},
                ],
            }
        )
        async with KubeClient(server.url, ssl_context=client_ctx, token="job-token") as client:
            yield server, client


def args(command: str, **kw: Any) -> argparse.Namespace:
    base: dict[str, Any] = {
        "command": command,
        "namespace": NS,
        "p2p_secret": None,
        "tls_secret": None,
        "service": None,
        "cluster_domain": "cluster.local",
        "validity_days": 30,
        "webhook_configuration": None,
    }
    base.update(kw)
    return argparse.Namespace(**base)


async def test_secrets_are_made_once_and_never_changed(api: tuple[ApiServer, KubeClient]) -> None:
    server, client = api
    made = args(
        "secrets", p2p_secret="shoal-p2p", tls_secret="shoal-webhook-tls", service="shoal-webhook"
    )
    lines = await execute(client, made)
    assert lines == [f"secret {NS}/shoal-p2p: created", f"secret {NS}/shoal-webhook-tls: created"]
    p2p = server.secrets[(NS, "shoal-p2p")]
    value = base64.b64decode(p2p["data"]["secret"])
    assert len(value) == 48  # P2PConfig.secretFile wants at least 16 bytes
    tls = dict(server.secrets[(NS, "shoal-webhook-tls")]["data"])
    assert await execute(client, made) == [
        f"secret {NS}/shoal-p2p: exists, left as it is",
        f"secret {NS}/shoal-webhook-tls: exists, left as it is",
    ]
    assert server.secrets[(NS, "shoal-p2p")]["data"] == p2p["data"]
    assert server.secrets[(NS, "shoal-webhook-tls")]["data"] == tls
    # the serving certificate: signed by the CA, for every name of the Service
    ca = x509.load_pem_x509_certificate(base64.b64decode(tls["ca.crt"]))
    leaf = x509.load_pem_x509_certificate(base64.b64decode(tls["tls.crt"]))
    leaf.verify_directly_issued_by(ca)
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert f"shoal-webhook.{NS}.svc" in sans.get_values_for_type(x509.DNSName)
    assert {who for who, _, _ in server.calls} == {"shoal-system:shoal-bootstrap"}


async def test_the_ca_goes_into_every_webhook_entry_once(api: tuple[ApiServer, KubeClient]) -> None:
    server, client = api
    await execute(client, args("secrets", tls_secret="t", service="shoal-webhook"))
    inject = args("inject-ca", tls_secret="t", webhook_configuration="shoal-webhook")
    assert await execute(client, inject) == ["shoal-webhook: caBundle written into 2 entries"]
    ca = server.secrets[(NS, "t")]["data"]["ca.crt"]
    hooks = server.webhooks["shoal-webhook"]["webhooks"]
    assert [h["clientConfig"]["caBundle"] for h in hooks] == [ca, ca]
    assert hooks[0]["clientConfig"]["service"] == {"name": "x"}  # nothing else touched
    assert await execute(client, inject) == ["shoal-webhook: caBundle already current"]


def test_the_patch_tests_each_entry_by_name() -> None:
    mwc = {
        "webhooks": [
            {"name": "a", "clientConfig": {"caBundle": "old"}},
            {"name": "b", "clientConfig": {}},
        ]
    }
    assert ca_patch(mwc, "new") == [
        {"op": "test", "path": "/webhooks/0/name", "value": "a"},
        {"op": "add", "path": "/webhooks/0/clientConfig/caBundle", "value": "new"},
        {"op": "test", "path": "/webhooks/1/name", "value": "b"},
        {"op": "add", "path": "/webhooks/1/clientConfig/caBundle", "value": "new"},
    ]


async def test_after_an_upgrade_deleted_them_the_post_job_makes_them_again(
    api: tuple[ApiServer, KubeClient],
) -> None:
    """Chart 0.1.0 rendered these Secrets itself; upgrading from it, Helm deletes them
    after the pre-upgrade Job ran. The post-upgrade Job (``secrets`` with
    ``--webhook-configuration``) makes them again and writes the new CA."""
    server, client = api
    both = {"p2p_secret": "shoal-p2p", "tls_secret": "tls", "service": "shoal-webhook"}
    await execute(client, args("secrets", **both))  # pre-upgrade: they still exist
    del server.secrets[(NS, "shoal-p2p")], server.secrets[(NS, "tls")]  # Helm's upgrade
    post = args("secrets", webhook_configuration="shoal-webhook", **both)
    assert await execute(client, post) == [
        f"secret {NS}/shoal-p2p: created",
        f"secret {NS}/tls: created",
        "shoal-webhook: caBundle written into 2 entries",
    ]
    ca = server.secrets[(NS, "tls")]["data"]["ca.crt"]
    assert {
        h["clientConfig"]["caBundle"] for h in server.webhooks["shoal-webhook"]["webhooks"]
    } == {ca}
