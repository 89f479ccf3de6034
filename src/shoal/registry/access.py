"""May this client read this blob? Asked of the origin, never answered by the swarm.

Before a blob is served from the node's store or the peer network, the agent sends a
``HEAD /v2/<name>/blobs/<digest>`` upstream with the client's own ``Authorization``: a
peer network must never become a way around a registry's access control (the complaint
users raise most against P2P mirrors: any pod reading any cached private layer). The
check is per credential, repository *and* digest, because a registry links blobs to
repositories: access to repository A says nothing about a blob that only B holds.
Positive answers are reused for ``accessCheckTtl`` seconds; refusals never are.
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
        self._granted: dict[tuple[str, str, str, str], tuple[float, Granted]] = {}
        self.checks = 0
        self.hits = 0

    def __repr__(self) -> str:
        return (
            f"<AccessChecker [{len(self._granted)} cached | {self.checks} asked, {self.hits} hits]>"
        )

    async def check(self, host: str, name: str, digest: Digest, authorization: str) -> Granted:
        cred = hashlib.sha256(authorization.encode()).hexdigest() if authorization else "-"
        key = (cred, host, name, str(digest))
        now = self._clock()
        cached = self._granted.get(key)
        if cached is not None and cached[0] > now:
            self.hits += 1
            return cached[1]
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
            granted = Granted(length)
            if self.ttl > 0:
                if len(self._granted) >= MAX_ENTRIES:
                    self._granted.pop(next(iter(self._granted)))
                self._granted[key] = (now + self.ttl, granted)
            return granted
        if status in (401, 403):
            raise AccessDenied(status, challenge, f"{host} refused access to {name}@{digest}")
        if status == 404:
            raise BlobUnknownError(f"{host} has no blob {digest} in {name}")
        raise UpstreamUnavailableError(f"access check at {host}: HTTP {status}")
