"""Requests between agents and roots are signed with the cluster secret.

``X-Shoal-Signature: t=<unix seconds>,n=<nonce>,b=<sha256 of the body>,mac=<hex>``
where the MAC is HMAC-SHA256 over the time, the nonce, the method, the path with its
query and the body's hash. Three properties follow:

- **Checked from headers alone.** The body's hash is in the signed header, so a root
  verifies the MAC before it reads one byte of the body, and reads at most the body
  the signer announced; an unsigned request costs it a header parse, not a 4 MiB
  buffer. The body is then checked against the signed hash.
- **Not replayable.** A signature older or newer than ``MAX_SKEW`` seconds is refused,
  and within that window the root remembers every nonce it accepted
  (``NonceMemory``): a captured request sent again gets 401.
- Nothing outside the cluster can join a swarm, learn who holds a private blob, or
  make a root fetch from an origin.

The secret authenticates; it does not encrypt. Joins carry the client's registry
``Authorization``, so the API runs over TLS (``shoal.control.tls``).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from shoal.errors import ShoalError

HEADER = "X-Shoal-Signature"
MAX_SKEW = 120.0
NONCE_BYTES = 16
#: nonce memory is kept in buckets of this many seconds of signature time
_BUCKET = 10


class SignatureInvalidError(ShoalError):
    http_status = 401
    oci_code = "UNAUTHORIZED"


def body_hash(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def _mac(secret: bytes, stamp: int, nonce: str, method: str, path: str, digest: str) -> str:
    msg = f"{stamp}\n{nonce}\n{method.upper()}\n{path}\n{digest}".encode()
    return hmac.new(secret, msg, hashlib.sha256).hexdigest()


def sign(secret: bytes, method: str, path: str, body: bytes, now: float) -> str:
    stamp = int(now)
    nonce = secrets.token_hex(NONCE_BYTES)
    digest = body_hash(body)
    return f"t={stamp},n={nonce},b={digest},mac={_mac(secret, stamp, nonce, method, path, digest)}"


@dataclass(frozen=True, slots=True)
class Signed:
    """A header whose MAC checked out: what it vouches for."""

    stamp: int
    nonce: str
    body_sha256: str

    def check_body(self, body: bytes) -> None:
        if not hmac.compare_digest(body_hash(body), self.body_sha256):
            raise SignatureInvalidError("body does not match its signature")


def verify_header(secret: bytes, header: str | None, method: str, path: str, now: float) -> Signed:
    """The signature's MAC and age, from the header alone (no body needed)."""
    if not header:
        raise SignatureInvalidError("request is not signed with the cluster secret")
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        stamp = int(fields["t"])
        nonce, digest, mac = fields["n"], fields["b"], fields["mac"]
        int(nonce, 16)
    except (KeyError, ValueError) as exc:
        raise SignatureInvalidError("malformed signature header") from exc
    if len(nonce) != 2 * NONCE_BYTES or len(digest) != 64:
        raise SignatureInvalidError("malformed signature header")
    if abs(now - stamp) > MAX_SKEW:
        raise SignatureInvalidError("signature expired")
    if not hmac.compare_digest(mac, _mac(secret, stamp, nonce, method, path, digest)):
        raise SignatureInvalidError("bad signature")
    return Signed(stamp, nonce, digest)


def verify(
    secret: bytes,
    header: str | None,
    method: str,
    path: str,
    body: bytes,
    now: float,
    *,
    nonces: NonceMemory | None = None,
) -> Signed:
    """Header, body and (with ``nonces``) freshness in one call."""
    signed = verify_header(secret, header, method, path, now)
    signed.check_body(body)
    if nonces is not None:
        nonces.claim(signed, now)
    return signed


class NonceMemory:
    """Every nonce accepted within the skew window; a second use is a replay.

    Nonces are kept in buckets by their signature's time: a bucket can be dropped once
    every signature in it has expired, so memory is bounded by the request rate times
    the window (``2 * MAX_SKEW``), a few MiB at a thousand requests a second.
    """

    def __init__(self, skew: float = MAX_SKEW) -> None:
        self.skew = skew
        self._buckets: dict[int, set[int]] = {}
        self.replays = 0

    def __len__(self) -> int:
        return sum(len(b) for b in self._buckets.values())

    def __repr__(self) -> str:
        return (
            f"<NonceMemory [{len(self)} nonces in {len(self._buckets)} buckets | "
            f"{self.replays} replays]>"
        )

    def claim(self, signed: Signed, now: float) -> None:
        """Accept ``signed``'s nonce once; ``SignatureInvalidError`` the second time."""
        self._expire(now)
        key = int(signed.nonce, 16)
        bucket = self._buckets.setdefault(signed.stamp // _BUCKET, set())
        if key in bucket:
            self.replays += 1
            raise SignatureInvalidError("replayed request (nonce already used)")
        bucket.add(key)

    def _expire(self, now: float) -> None:
        horizon = (now - self.skew) // _BUCKET - 1
        for old in [b for b in self._buckets if b < horizon]:
            del self._buckets[old]


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
