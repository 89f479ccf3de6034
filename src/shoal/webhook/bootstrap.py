"""``python -m shoal.webhook.bootstrap``: the chart's hook Job, which makes secrets once.

A chart that generates a secret in its templates (``randAlphaNum``, ``genCA``) renders a
new one every time, and GitOps tools render on every sync: the cluster secret and the
webhook CA would rotate each time and old and new Pods would stop trusting each other.
So the chart renders no secret; this Job, run as a Helm hook, makes what is missing and
never changes what exists:

- ``secrets`` (pre-install, pre-upgrade): the agents' and roots' cluster secret (key
  ``secret``, 48 random characters); in ``hook`` TLS mode, the webhook's CA and
  serving certificate (a ``kubernetes.io/tls`` Secret with ``ca.crt``); and, with
  ``--control-secret``, the control API's own CA and the roots' certificate, in the
  same layout (agents mount only ``ca.crt``, roots the certificate and key); with
  ``--preheat-secret``, the preheat job API's operator credential (key ``secret``, like
  the cluster secret, but a Secret of its own: only the roots and the webhook mount it,
  never the nodes).

The roots' certificate names every StatefulSet member by a wildcard
(``*.<root>.<ns>.svc[.<domain>]``), not one name per replica: the Secret is made once
and never changed, so a later ``root.replicas`` increase must not need a new one.
- ``secrets --webhook-configuration NAME`` (post-install, post-upgrade): the same
  again (an upgrade from a chart version that rendered these Secrets has just had Helm
  delete them), then the CA into every entry's ``clientConfig.caBundle`` of the
  webhook's ``MutatingWebhookConfiguration``, with a JSON Patch that tests each
  entry's name first (no blind index writes). ``inject-ca`` does only the latter.

Two Jobs racing on a create meet as ``409 AlreadyExists``: the loser reads the winner's.
Every failure is one line on stderr and a non-zero exit (the Job retries).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime
import secrets
import sys
from collections.abc import Sequence
from typing import Any, cast

from shoal.errors import ShoalError
from shoal.webhook.kube import KubeApiError, KubeClient
from shoal.webhook.types import Secret

CREATED_BY = "app.kubernetes.io/created-by"
CREATOR = "shoal-bootstrap"


def p2p_secret(name: str, namespace: str) -> Secret:
    value = secrets.token_urlsafe(36)  # 48 characters, 288 bits
    return cast(
        Secret,
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": namespace, "labels": {CREATED_BY: CREATOR}},
            "type": "Opaque",
            "data": {"secret": base64.b64encode(value.encode()).decode()},
        },
    )


def service_names(service: str, namespace: str, cluster_domain: str) -> list[str]:
    """Every name the API server may use for the webhook Service."""
    svc = f"{service}.{namespace}.svc"
    return [service, f"{service}.{namespace}", svc, f"{svc}.{cluster_domain}"]


def tls_secret(name: str, namespace: str, service: str, cluster_domain: str, days: int) -> Secret:
    """A fresh CA (P-256) and a serving certificate it signed for the Service's names."""
    names = service_names(service, namespace, cluster_domain)
    return _ca_secret(name, namespace, f"{service}-ca", names, days)


def control_names(root_service: str, namespace: str, cluster_domain: str) -> list[str]:
    """Every name agents may dial a root by: each StatefulSet member of the headless
    Service (``<root>-N.<root>.<ns>.svc``, with and without the cluster domain) and the
    Service itself."""
    names = service_names(root_service, namespace, cluster_domain)
    return [*names, f"*.{names[2]}", f"*.{names[3]}"]


def control_secret(
    name: str, namespace: str, root_service: str, cluster_domain: str, days: int
) -> Secret:
    """The control API's own CA and the roots' serving certificate (not the webhook's
    CA: a webhook key must not be able to impersonate a root, nor the reverse)."""
    names = control_names(root_service, namespace, cluster_domain)
    return _ca_secret(name, namespace, f"{root_service}-control-ca", names, days)


def _ca_secret(name: str, namespace: str, ca_common: str, names: list[str], days: int) -> Secret:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    until = now + datetime.timedelta(days=days)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ca_common)])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[2])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(until)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    return cast(
        Secret,
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": namespace, "labels": {CREATED_BY: CREATOR}},
            "type": "kubernetes.io/tls",
            "data": {
                "ca.crt": b64(ca.public_bytes(pem)),
                "tls.crt": b64(leaf.public_bytes(pem)),
                "tls.key": b64(key_pem),
            },
        },
    )


async def create_if_missing(client: KubeClient, namespace: str, body: Secret) -> str:
    name = body["metadata"]["name"]
    if await client.get_secret(namespace, name) is not None:
        return f"secret {namespace}/{name}: exists, left as it is"
    try:
        await client.create_secret(namespace, body)
    except KubeApiError as exc:
        if exc.status == 409:
            return f"secret {namespace}/{name}: made by someone else meanwhile, left as it is"
        raise
    return f"secret {namespace}/{name}: created"


async def ensure_secrets(client: KubeClient, args: argparse.Namespace) -> list[str]:
    out = []
    if args.p2p_secret:
        out.append(
            await create_if_missing(
                client, args.namespace, p2p_secret(args.p2p_secret, args.namespace)
            )
        )
    if args.preheat_secret:
        body = p2p_secret(args.preheat_secret, args.namespace)
        out.append(await create_if_missing(client, args.namespace, body))
    if args.tls_secret:
        if not args.service:
            raise ShoalError("--tls-secret needs --service (the webhook Service's name)")
        body = tls_secret(
            args.tls_secret, args.namespace, args.service, args.cluster_domain, args.validity_days
        )
        out.append(await create_if_missing(client, args.namespace, body))
    if args.control_secret:
        if not args.control_service:
            raise ShoalError("--control-secret needs --control-service (the roots' Service)")
        body = control_secret(
            args.control_secret,
            args.namespace,
            args.control_service,
            args.cluster_domain,
            args.control_validity_days,
        )
        out.append(await create_if_missing(client, args.namespace, body))
    return out


def ca_patch(mwc: dict[str, Any], ca: str) -> list[dict[str, Any]]:
    """The JSON Patch setting every entry's caBundle to ``ca`` (empty if all have it)."""
    ops: list[dict[str, Any]] = []
    for i, hook in enumerate(mwc.get("webhooks") or []):
        if (hook.get("clientConfig") or {}).get("caBundle") == ca:
            continue
        ops.append({"op": "test", "path": f"/webhooks/{i}/name", "value": hook.get("name")})
        ops.append({"op": "add", "path": f"/webhooks/{i}/clientConfig/caBundle", "value": ca})
    return ops


async def inject_ca(client: KubeClient, args: argparse.Namespace) -> list[str]:
    secret = await client.get_secret(args.namespace, args.tls_secret)
    ca = ((secret or {}).get("data") or {}).get("ca.crt")
    if not ca:
        raise ShoalError(f"secret {args.namespace}/{args.tls_secret} has no ca.crt")
    mwc = await client.get_webhook_configuration(args.webhook_configuration)
    if mwc is None:
        raise ShoalError(f"MutatingWebhookConfiguration {args.webhook_configuration} not found")
    ops = ca_patch(mwc, ca)
    if not ops:
        return [f"{args.webhook_configuration}: caBundle already current"]
    await client.patch_webhook_configuration(args.webhook_configuration, ops)
    return [f"{args.webhook_configuration}: caBundle written into {len(ops) // 2} entries"]


async def execute(client: KubeClient, args: argparse.Namespace) -> list[str]:
    if args.command == "secrets":
        out = await ensure_secrets(client, args)
        if args.webhook_configuration:
            out += await inject_ca(client, args)
        return out
    return await inject_ca(client, args)


async def run(args: argparse.Namespace) -> list[str]:
    async with KubeClient.in_cluster() as client:
        return await execute(client, args)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m shoal.webhook.bootstrap", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("secrets", help="create the cluster secret and the TLS secrets")
    s.add_argument("--namespace", required=True)
    s.add_argument("--p2p-secret", metavar="NAME", help="the cluster secret to create")
    s.add_argument(
        "--preheat-secret", metavar="NAME", help="the preheat operator credential to create"
    )
    s.add_argument("--tls-secret", metavar="NAME", help="the webhook TLS secret to create")
    s.add_argument("--service", metavar="NAME", help="the webhook Service (certificate names)")
    s.add_argument("--cluster-domain", default="cluster.local")
    s.add_argument("--validity-days", type=int, default=3650)
    s.add_argument(
        "--control-secret", metavar="NAME", help="the control API's CA and roots' certificate"
    )
    s.add_argument(
        "--control-service", metavar="NAME", help="the roots' headless Service (certificate names)"
    )
    s.add_argument("--control-validity-days", type=int, default=3650)
    s.add_argument(
        "--webhook-configuration",
        metavar="NAME",
        help="then write the TLS secret's CA into this MutatingWebhookConfiguration",
    )
    c = sub.add_parser("inject-ca", help="write the CA into the webhook configuration")
    c.add_argument("--namespace", required=True)
    c.add_argument("--tls-secret", metavar="NAME", required=True)
    c.add_argument("--webhook-configuration", metavar="NAME", required=True)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        for line in asyncio.run(run(args)):
            print(f"bootstrap: {line}")
    except ShoalError as exc:
        print(f"bootstrap: {exc.message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
