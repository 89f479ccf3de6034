"""An image reference resolved for a preheat: its blobs, and the header that reads them.

The root asks the registry for the image's manifest with the job's credentials before
any agent hears of the job, so credentials that do not grant access fail the job at
once and nothing is fetched or stored anywhere. A user and password become ``Basic``,
or, when the registry challenges with ``Bearer``, a pull token from the challenge's
realm (fetched through the same egress policy as everything else: the realm must be a
listed registry or in its ``redirectHosts``); the agents then get that token, scoped to
this repository's pulls and short-lived, never the password.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from dataclasses import dataclass

from yarl import URL

from shoal.control.preheat import BlobRef, Credentials
from shoal.errors import (
    AccessDeniedError,
    ManifestInvalidError,
    ManifestUnknownError,
    ShoalError,
    UpstreamUnavailableError,
)
from shoal.oci.manifest import (
    ACCEPT_ALL,
    INDEX_TYPES,
    MAX_MANIFEST_BYTES,
    media_type_of,
    parse_index,
    parse_manifest,
    pick_platform,
)
from shoal.oci.reference import split_image
from shoal.registry.upstream import UpstreamClient

_PARAM_RE = re.compile(r'(\w+)="([^"]*)"')


@dataclass(frozen=True, slots=True)
class Resolved:
    host: str
    name: str
    #: the header value agents send (the origin checks it for every blob)
    authorization: str
    #: digest of the image manifest (the platform's, for an index)
    manifest: str
    blobs: list[BlobRef]

    def __repr__(self) -> str:
        return f"<Resolved {self.host}/{self.name}@{self.manifest[:19]} [{len(self.blobs)} blobs]>"


def basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


async def resolve(
    upstream: UpstreamClient, image: str, creds: Credentials, platform: str = "linux/amd64"
) -> Resolved:
    """The image's blobs (config and layers) and the header that reads them."""
    host, name, reference = split_image(image)
    upstream.check_allowed(host)
    auth = creds.authorization or (basic(creds.username, creds.password) if creds.username else "")
    status, challenge, body, media = await _get_manifest(upstream, host, name, reference, auth)
    if status == 401 and challenge and challenge.lower().startswith("bearer"):
        auth = await _token(upstream, host, name, challenge, creds)
        status, challenge, body, media = await _get_manifest(upstream, host, name, reference, auth)
    _check(status, host, name, reference)
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    if media_type_of(body, media) in INDEX_TYPES:
        os_, _, arch = platform.partition("/")
        child = pick_platform(parse_index(body), os_, arch or "amd64")
        status, _, body, media = await _get_manifest(upstream, host, name, child["digest"], auth)
        _check(status, host, name, child["digest"])
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        if digest != child["digest"]:
            raise ManifestInvalidError(
                f"{host}/{name}: manifest {child['digest']} hashes to {digest}"
            )
    manifest = parse_manifest(body)
    blobs = [BlobRef(d["digest"], d["size"]) for d in (manifest["config"], *manifest["layers"])]
    if any(b.size < 0 for b in blobs):
        raise ManifestInvalidError(f"{host}/{name}: a blob of negative size")
    unique = list({b.digest: b for b in blobs}.values())
    return Resolved(host, name, auth, digest, unique)


async def _get_manifest(
    upstream: UpstreamClient, host: str, name: str, reference: str, auth: str
) -> tuple[int, str, bytes, str | None]:
    headers = {"Accept": ACCEPT_ALL}
    if auth:
        headers["Authorization"] = auth
    resp = await upstream.request("GET", host, f"/v2/{name}/manifests/{reference}", headers)
    async with resp:
        if resp.status != 200:
            return resp.status, resp.headers.get("WWW-Authenticate", ""), b"", None
        if (resp.content_length or 0) > MAX_MANIFEST_BYTES:
            raise ManifestInvalidError(f"{host}/{name}: manifest larger than 4 MiB")
        body = await resp.content.read(MAX_MANIFEST_BYTES + 1)
        if len(body) > MAX_MANIFEST_BYTES:
            raise ManifestInvalidError(f"{host}/{name}: manifest larger than 4 MiB")
        return 200, "", body, resp.headers.get("Content-Type")


def _check(status: int, host: str, name: str, reference: str) -> None:
    if status == 200:
        return
    if status in (401, 403):
        raise AccessDeniedError(
            f"{host} refused these credentials access to {name}:{reference} (HTTP {status})"
        )
    if status == 404:
        raise ManifestUnknownError(f"{host} has no image {name}:{reference}")
    raise UpstreamUnavailableError(f"{host}: manifest of {name}:{reference}: HTTP {status}")


async def _token(
    upstream: UpstreamClient, host: str, name: str, challenge: str, creds: Credentials
) -> str:
    params = dict(_PARAM_RE.findall(challenge.partition(" ")[2]))
    realm = params.get("realm")
    if not realm:
        raise AccessDeniedError(f"{host}: Bearer challenge without a realm")
    query = {"scope": f"repository:{name}:pull"}
    if params.get("service"):
        query["service"] = params["service"]
    headers = {}
    if creds.username:
        headers["Authorization"] = basic(creds.username, creds.password)
    try:
        url = str(URL(realm).with_query(query))
    except ValueError as exc:
        raise AccessDeniedError(f"{host}: malformed token realm") from exc
    resp = await upstream.request("GET", host, "", headers, url=url)
    async with resp:
        if resp.status != 200:
            raise AccessDeniedError(f"token for {name} from {URL(realm).host}: HTTP {resp.status}")
        raw = await resp.content.read(64 << 10)
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise AccessDeniedError(f"token for {name}: the realm's answer is not JSON") from exc
    token = doc.get("token") or doc.get("access_token") if isinstance(doc, dict) else None
    if not isinstance(token, str) or not token:
        raise AccessDeniedError(f"token for {name}: none in the realm's answer")
    return f"Bearer {token}"


__all__ = ["Resolved", "ShoalError", "basic", "resolve"]
