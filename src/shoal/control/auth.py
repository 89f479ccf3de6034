"""Requests between agents and roots are signed with the cluster secret.

``X-Shoal-Signature: t=<unix seconds>,mac=<hex>`` where the MAC is HMAC-SHA256 over the
time, the method, the path with its query and the body. A signature older or newer
than ``MAX_SKEW`` seconds is refused, so a captured request cannot be replayed later;
nothing outside the cluster can join a swarm, learn who holds a private blob, or make a
root fetch from an origin.
"""

from __future__ import annotations

import hashlib
import hmac

from shoal.errors import ShoalError

HEADER = "X-Shoal-Signature"
MAX_SKEW = 120.0


class SignatureInvalidError(ShoalError):
    http_status = 401
    oci_code = "UNAUTHORIZED"


def _mac(secret: bytes, stamp: int, method: str, path: str, body: bytes) -> str:
    msg = f"{stamp}\n{method.upper()}\n{path}\n".encode() + body
    return hmac.new(secret, msg, hashlib.sha256).hexdigest()


def sign(secret: bytes, method: str, path: str, body: bytes, now: float) -> str:
    stamp = int(now)
    return f"t={stamp},mac={_mac(secret, stamp, method, path, body)}"


def verify(
    secret: bytes, header: str | None, method: str, path: str, body: bytes, now: float
) -> None:
    if not header:
        raise SignatureInvalidError("request is not signed with the cluster secret")
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        stamp = int(fields["t"])
        mac = fields["mac"]
    except (KeyError, ValueError) as exc:
        raise SignatureInvalidError("malformed signature header") from exc
    if abs(now - stamp) > MAX_SKEW:
        raise SignatureInvalidError("signature expired")
    if not hmac.compare_digest(mac, _mac(secret, stamp, method, path, body)):
        raise SignatureInvalidError("bad signature")


def cluster_secret(secret: str, secret_file: str) -> bytes:
    """The secret from ``P2PConfig``: ``secretFile`` wins; an empty secret is refused."""
    from pathlib import Path

    from shoal.errors import ConfigInvalidError

    if secret_file:
        try:
            value = Path(secret_file).read_bytes().strip()
        except OSError as exc:
            raise ConfigInvalidError(
                f"config: P2PConfig.secretFile: cannot read {secret_file}: {exc.strerror}"
            ) from exc
    else:
        value = secret.encode()
    if len(value) < 16:
        raise ConfigInvalidError(
            "config: P2PConfig.secret (or secretFile) must hold at least 16 bytes: "
            "peers prove membership of the cluster with it"
        )
    return value
