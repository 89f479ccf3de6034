"""The chart's bootstrap Job: secrets made once, the CA written into the webhook config.

Against the stand-in API server over real TLS (tests/cluster/apiserver.py): the first
run creates, a second run changes nothing (a GitOps sync, a ``helm upgrade``), and the
certificate it made is one a client trusting the CA accepts for the Service's name.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography import x509

from shoal.webhook.bootstrap import ca_patch, execute, parser
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
        "preheat_secret": None,
        "tls_secret": None,
        "service": None,
        "cluster_domain": "cluster.local",
        "validity_days": 30,
        "webhook_configuration": None,
        "control_secret": None,
        "control_service": None,
        "control_validity_days": 30,
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


async def test_the_preheat_operator_credential_is_a_secret_of_its_own(
    api: tuple[ApiServer, KubeClient],
) -> None:
    """Made once, like the cluster secret, but apart from it: the nodes mount the cluster
    secret, and the operator credential must not be on them (docs/preheat.md)."""
    server, client = api
    made = args("secrets", p2p_secret="shoal-p2p", preheat_secret="shoal-preheat")
    assert await execute(client, made) == [
        f"secret {NS}/shoal-p2p: created",
        f"secret {NS}/shoal-preheat: created",
    ]
    operator = server.secrets[(NS, "shoal-preheat")]["data"]
    assert len(base64.b64decode(operator["secret"])) == 48  # PreheatConfig wants 16 at least
    assert operator != server.secrets[(NS, "shoal-p2p")]["data"]
    assert (await execute(client, made))[1] == f"secret {NS}/shoal-preheat: exists, left as it is"
    assert server.secrets[(NS, "shoal-preheat")]["data"] == operator
    assert (
        parser().parse_args(["secrets", "--namespace", NS, "--preheat-secret", "x"]).preheat_secret
        == "x"
    )


async def handshake(secret: dict[str, str], name: str, tmp_path: Path) -> None:
    """A real TLS handshake: a server with the Secret's certificate and key, a client
    trusting only the Secret's ``ca.crt`` (what an agent mounts) asking for ``name``."""
    for key in ("tls.crt", "tls.key"):
        (tmp_path / key).write_bytes(base64.b64decode(secret[key]))
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(tmp_path / "tls.crt", tmp_path / "tls.key")
    client_ctx = ssl.create_default_context(cadata=base64.b64decode(secret["ca.crt"]).decode())

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        _, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_ctx, server_hostname=name
        )
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()
    finally:
        server.close()
        await server.wait_closed()


async def test_the_control_ca_and_the_roots_certificate(
    api: tuple[ApiServer, KubeClient], tmp_path: Path
) -> None:
    """Made once; a CA of its own; the certificate good for every StatefulSet member's
    name (also for replicas added later: the Secret is never made again) and nothing
    outside the roots' Service."""
    server, client = api
    made = args(
        "secrets",
        tls_secret="shoal-webhook-tls",
        service="shoal-webhook",
        control_secret="shoal-control-tls",
        control_service="shoal-root",
    )
    assert (await execute(client, made))[-1] == f"secret {NS}/shoal-control-tls: created"
    control = dict(server.secrets[(NS, "shoal-control-tls")]["data"])
    assert (await execute(client, made))[-1] == (
        f"secret {NS}/shoal-control-tls: exists, left as it is"
    )
    assert server.secrets[(NS, "shoal-control-tls")]["data"] == control
    webhook = server.secrets[(NS, "shoal-webhook-tls")]["data"]
    assert control["ca.crt"] != webhook["ca.crt"]
    for name in (
        f"shoal-root-0.shoal-root.{NS}.svc",
        f"shoal-root-2.shoal-root.{NS}.svc.cluster.local",
        f"shoal-root-11.shoal-root.{NS}.svc.cluster.local",
        f"shoal-root.{NS}.svc",
    ):
        await handshake(control, name, tmp_path)
    for name in (f"shoal-webhook.{NS}.svc", f"a.b.shoal-root.{NS}.svc", "shoal-root-0.evil.svc"):
        with pytest.raises(ssl.SSLCertVerificationError):
            await handshake(control, name, tmp_path)
    # the webhook's certificate is no good for a root
    with pytest.raises(ssl.SSLCertVerificationError):
        await handshake(
            {**webhook, "ca.crt": control["ca.crt"]}, f"shoal-root-0.shoal-root.{NS}.svc", tmp_path
        )


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
