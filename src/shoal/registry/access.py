"""May this client read this blob? Asked of the origin, never answered by the swarm.

Before a blob is served from the node's store or the peer network, the origin must
have said yes to this client's own ``Authorization``: a peer network must never become
a way around a registry's access control (the complaint users raise most against P2P
mirrors: any pod reading any cached private layer). A yes is per credential,
repository *and* digest, because a registry links blobs to repositories: access to
repository A says nothing about a blob that only B holds.

The origin says yes in one of three ways, cheapest first, and every yes is reused for
``accessCheckTtl`` seconds (refusals never are):

- **an image manifest it served** to this credential from this repository (``grant_
  manifest``): a registry accepts a manifest only when every blob it names is in the
  repository, so the manifest's GET, which the runtime makes anyway before any blob,
  is the access check for all of the image's blobs at once: one per (credential,
  repository, image) and TTL, and no request of its own;
- **the blob's own GET** with this credential (``grant``), when the agent fetches a
  cold blob from the origin itself;
- otherwise a ``HEAD /v2/<name>/blobs/<digest>`` with the client's credentials
  (``check``), which the mirror sends alongside the download instead of before it.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass

from shoal.errors import AccessDeniedError, BlobUnknownError, UpstreamUnavailableError
from shoal.oci.digest import Digest
from shoal.registry.upstream import UpstreamClient

#: entries kept at most; the oldest go first when it is full
MAX_ENTRIES = 65536
#: (credential hash, registry, repository, digest)
_Key = tuple[str, str, str, str]


@dataclass(frozen=True, slots=True)
class Granted:
    """The upstream said yes; ``size`` is the blob's length from its answer, if given."""

    size: int | None


class AccessDenied(AccessDeniedError):
    """The upstream refused; ``status`` and ``challenge`` go back to the client as they came."""

    def __init__(self, status: int, challenge: str | None, message: str) -> None:
        super().__init__(message)
        self.http_status = status
        self.oci_code = "UNAUTHORIZED" if status == 401 else "DENIED"
        self.challenge = challenge


class AccessChecker:
    def __init__(
        self,
        upstream: UpstreamClient,
        ttl: float,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.upstream = upstream
        self.ttl = ttl
        self._clock = clock
        self._granted: dict[_Key, tuple[float, Granted]] = {}
        self.checks = 0
        self.hits = 0
        self.manifest_grants = 0

    def __repr__(self) -> str:
        return (
            f"<AccessChecker [{len(self._granted)} cached | {self.checks} asked, {self.hits} hits, "
            f"{self.manifest_grants} manifests]>"
        )

    @staticmethod
    def _key(host: str, name: str, digest: Digest | str, authorization: str) -> _Key:
        cred = hashlib.sha256(authorization.encode()).hexdigest() if authorization else "-"
        return (cred, host, name, str(digest))

    def cached(
        self, host: str, name: str, digest: Digest | str, authorization: str
    ) -> Granted | None:
        """A yes still within its TTL, or None (nothing is asked)."""
        hit = self._granted.get(self._key(host, name, digest, authorization))
        if hit is not None and hit[0] > self._clock():
            self.hits += 1
            return hit[1]
        return None

    def grant(
        self, host: str, name: str, digest: Digest | str, authorization: str, size: int | None
    ) -> None:
        """The origin answered this credential's request for the blob with its bytes."""
        if self.ttl <= 0:
            return
        key = self._key(host, name, digest, authorization)
        self._granted.pop(key, None)  # re-inserted at the young end
        if len(self._granted) >= MAX_ENTRIES:
            self._granted.pop(next(iter(self._granted)))
        self._granted[key] = (self._clock() + self.ttl, Granted(size))

    def grant_manifest(
        self, host: str, name: str, authorization: str, blobs: list[tuple[Digest, int]]
    ) -> None:
        """The origin served this credential an image manifest of ``name`` naming
        ``blobs`` (digest, size): each of them is in the repository, readable by it."""
        for digest, size in blobs:
            self.grant(host, name, digest, authorization, size)
        self.manifest_grants += 1

    async def check(self, host: str, name: str, digest: Digest, authorization: str) -> Granted:
        cached = self.cached(host, name, digest, authorization)
        if cached is not None:
            return cached
        self.checks += 1
        headers = {"Authorization": authorization} if authorization else {}
        resp = await self.upstream.request(
            "HEAD", host, f"/v2/{name}/blobs/{digest}", headers, follow_redirects=True
        )
        async with resp:
            status = resp.status
            length = resp.content_length
            challenge = resp.headers.get("WWW-Authenticate")
        if status == 200:
            self.grant(host, name, digest, authorization, length)
            return Granted(length)
        if status in (401, 403):
            raise AccessDenied(status, challenge, f"{host} refused access to {name}@{digest}")
        if status == 404:
            raise BlobUnknownError(f"{host} has no blob {digest} in {name}")
        raise UpstreamUnavailableError(f"access check at {host}: HTTP {status}")
