"""The agent's registry mirror: the OCI distribution pull API on the proxy port.

The container runtime talks to this endpoint as to a registry. Every request names (or
implies) its upstream registry; the client's ``Authorization`` goes upstream unchanged
and the upstream's ``401`` comes back unchanged, so the runtime performs its own token
dance with the registry's realm and the mirror never holds a credential of its own.

Blob bodies are hashed while they stream. The last chunk is held back until the digest
is known to match: on a mismatch the connection is cut before the body is complete, so
no client can take a corrupted blob for a whole one.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import time
from collections.abc import Awaitable, Callable

import aiohttp
from aiohttp import web
from yarl import URL

from shoal.cache.blob import BlobInfo
from shoal.cache.errors import CacheFullError, DiskFullError
from shoal.config import Config
from shoal.errors import (
    AccessDeniedError,
    DigestMismatchError,
    ManifestInvalidError,
    RangeNotSatisfiableError,
    ShoalError,
)
from shoal.httpserver import SERVER_LIMITS, ServerLimits
from shoal.observability import AuditLog, AuditRecord, Metrics, MetricType
from shoal.observability.audit import DOWNLOAD, HTTP_PREAD
from shoal.observability.exporter import metrics_handler
from shoal.observability.http import FIRST_BYTE, elapsed, mark_first_byte, request_context
from shoal.oci.digest import Digest, digest_of, parse_digest
from shoal.oci.manifest import (
    ACCEPT_ALL,
    MANIFEST_TYPES,
    MAX_MANIFEST_BYTES,
    media_type_of,
    parse_manifest,
)
from shoal.oci.range import ByteRange, parse_range
from shoal.oci.reference import check_name, parse_manifest_reference
from shoal.oci.upstream import derive_upstream
from shoal.registry.access import AccessChecker, Granted
from shoal.registry.egress import EgressRefusedError
from shoal.registry.origin_fetch import Source, UpstreamRefusedError
from shoal.registry.provider import BlobProvider, OriginProvider
from shoal.registry.relay import relay_body
from shoal.registry.responses import (
    API_VERSION_HEADER,
    error_response,
    oci_error,
    relay_upstream_error,
)
from shoal.registry.store_stream import blob_headers, stream_from_store
from shoal.registry.upstream import UpstreamClient

log = logging.getLogger(__name__)

#: paths a blob URL may have at the accelerator: the registry API, or the registry's
#: storage layout as object stores serve it (what overlaybd asks for after a redirect)
_ACCEL_PATHS = (
    re.compile(r"^/v2/(?P<name>.+)/blobs/(?P<digest>sha256:[a-f0-9]{64})$"),
    re.compile(r"^/docker/registry/v2/blobs/sha256/[a-f0-9]{2}/(?P<hex>[a-f0-9]{64})/data$"),
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Mirror:
    """The mirror's handlers; ``app()`` builds the ``aiohttp`` application."""

    def __init__(
        self,
        config: Config,
        upstream: UpstreamClient,
        metrics: Metrics,
        audit: AuditLog,
        *,
        provider: BlobProvider | None = None,
        access: AccessChecker | None = None,
    ) -> None:
        self.config = config
        self.upstream = upstream
        self.metrics = metrics
        self.audit = audit
        self.provider = provider
        self.access = access or AccessChecker(upstream, config.upstream.access_check_ttl)
        if isinstance(provider, OriginProvider) and provider.fetcher.access is None:
            provider.fetcher.access = self.access  # its GETs are access checks too
        self._limit = asyncio.Semaphore(config.proxy.proxy_concurrency_limit)
        self.waiting = 0
        if config.accelerator.enable:
            upstream.allow_hosts(config.accelerator.allowed_hosts)

    def __repr__(self) -> str:
        active = self.config.proxy.proxy_concurrency_limit - self._limit._value
        return f"<Mirror [blobs: {active} upstream, {self.waiting} waiting]>"

    def app(self) -> web.Application:
        app = web.Application(
            middlewares=[request_context, self._middleware], client_max_size=1 << 20
        )
        app.on_response_prepare.append(mark_first_byte)
        app[SERVER_LIMITS] = ServerLimits.of(self.config.proxy)
        routes = [
            web.get("/v2/", self.handle_base),
            web.get("/v2", self.handle_base),
            web.route("*", "/v2/{name:.+}/manifests/{reference}", self.handle_manifest),
            web.route("*", "/v2/{name:.+}/blobs/{digest}", self.handle_blob),
            web.get("/accelerator/{url:.+}", self.handle_accelerator),
        ]
        if self.config.exporter.enable and not self.config.exporter.standalone_exporter_port:
            routes.append(metrics_handler(self.metrics))
        app.add_routes(routes)
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        start = time.perf_counter()
        head = request.method == "HEAD"
        try:
            resp = await handler(request)
        except ShoalError as exc:
            resp = error_response(exc, head=head)
        except web.HTTPException as exc:
            if exc.status == 405:
                resp = oci_error(405, "UNSUPPORTED", "this mirror serves pulls only", head=head)
            elif exc.status == 404:
                resp = oci_error(404, "NAME_UNKNOWN", "no such endpoint", head=head)
            elif exc.status >= 400:
                # every other refusal aiohttp raises (413, 400 ...) as an OCI body too
                code = "SIZE_INVALID" if exc.status == 413 else "UNSUPPORTED"
                resp = oci_error(exc.status, code, exc.reason, head=head)
            else:
                raise
        sent = resp.content_length or 0
        self.metrics.record(MetricType.HTTP, sent, time.perf_counter() - start)
        return resp

    # --- helpers -----------------------------------------------------------------

    def _upstream_for(self, request: web.Request) -> str:
        host = derive_upstream(
            request.query.get("ns"), request.headers.get("Host"), self.config.upstream.default
        )
        self.upstream.check_allowed(host)
        return host

    @staticmethod
    def _only(request: web.Request, *methods: str) -> None:
        if request.method not in methods:
            raise web.HTTPMethodNotAllowed(request.method, list(methods))

    # --- /v2/ --------------------------------------------------------------------

    async def handle_base(self, request: web.Request) -> web.StreamResponse:
        try:
            host = self._upstream_for(request)
        except ShoalError:
            return web.json_response({}, headers=API_VERSION_HEADER)
        headers = {"Authorization": request.headers.get("Authorization", "")}
        resp = await self.upstream.request("GET", host, "/v2/", headers)
        async with resp:
            if resp.status == 200:
                return web.json_response({}, headers=API_VERSION_HEADER)
            return await relay_upstream_error(resp, head=False)

    # --- manifests ---------------------------------------------------------------

    async def handle_manifest(self, request: web.Request) -> web.StreamResponse:
        self._only(request, "GET", "HEAD")
        name = check_name(request.match_info["name"])
        ref = parse_manifest_reference(request.match_info["reference"])
        host = self._upstream_for(request)
        head = request.method == "HEAD"
        headers = {
            "Authorization": request.headers.get("Authorization", ""),
            "Accept": _manifest_accept(request),
        }
        path = f"/v2/{name}/manifests/{ref}"
        resp = await self.upstream.request(
            request.method, host, path, headers, follow_redirects=True
        )
        async with resp:
            if resp.status != 200:
                return await relay_upstream_error(resp, head=head)
            out = dict(API_VERSION_HEADER)
            out["Content-Type"] = resp.headers.get("Content-Type", "application/json")
            if head:
                for key in ("Docker-Content-Digest", "Content-Length"):
                    if key in resp.headers:
                        out[key] = resp.headers[key]
                if isinstance(ref, Digest):
                    out["Docker-Content-Digest"] = str(ref)
                return web.Response(status=200, headers=out)
            body = await resp.content.read(MAX_MANIFEST_BYTES + 1)
            if len(body) > MAX_MANIFEST_BYTES:
                raise ManifestInvalidError(f"manifest larger than {MAX_MANIFEST_BYTES} bytes")
            algorithm = ref.algorithm if isinstance(ref, Digest) else "sha256"
            actual = digest_of(body, algorithm)
            if isinstance(ref, Digest) and actual != str(ref):
                raise DigestMismatchError(f"upstream manifest {ref} hashes to {actual}")
            out["Docker-Content-Digest"] = actual
            if self.provider is not None:
                self._prefetch(
                    body, out["Content-Type"], Source(host, name, headers["Authorization"])
                )
            return web.Response(status=200, body=body, headers=out)

    def _prefetch(self, body: bytes, content_type: str, source: Source) -> None:
        """An image manifest names the blobs the runtime is about to ask for: the
        provider may start them all now (an index names manifests, not blobs)."""
        assert self.provider is not None
        try:
            if media_type_of(body, content_type) not in MANIFEST_TYPES:
                return
            manifest = parse_manifest(body)
            blobs = [
                (parse_digest(d["digest"]), d["size"])
                for d in (manifest["config"], *manifest["layers"])
            ]
        except ShoalError as exc:
            log.debug("no prefetch for %s: %s", source.name, exc)
            return
        # the origin served this client the manifest: its blobs are readable by it
        self.access.grant_manifest(source.host, source.name, source.authorization, blobs)
        started = self.provider.prefetch(blobs, source)
        if started:
            log.debug("prefetching %d blobs of %s", started, source.name)

    # --- blobs -------------------------------------------------------------------

    async def handle_blob(self, request: web.Request) -> web.StreamResponse:
        self._only(request, "GET", "HEAD")
        name = check_name(request.match_info["name"])
        digest = parse_digest(request.match_info["digest"])
        host = self._upstream_for(request)
        byte_range = _client_range(request)
        path = f"/v2/{name}/blobs/{digest}"
        pathname = f"/{self.upstream.base_url(host)}{path}"
        if self.provider is not None:
            self.provider.store.check_intact(str(digest))  # a lost data file: fetched anew
            info = self.provider.store.lookup(str(digest))
            stored = info is not None and info.complete
            source = "store" if stored else "p2p" if self.config.p2p.roots else "origin"
            resp = await self._serve_stored(request, host, name, digest, byte_range, pathname)
        elif request.method == "HEAD":
            return await self._head_blob(request, host, path, digest)
        else:
            source = "origin"
            resp = await self._relay_blob(request, host, path, pathname, digest, byte_range)
        if request.method == "GET" and resp.status in (200, 206):
            sent = resp.content_length if resp.content_length is not None else resp.body_length
            self.metrics.blob_served(source, sent, elapsed(request), request.get(FIRST_BYTE))
        return resp

    async def _serve_stored(
        self,
        request: web.Request,
        host: str,
        name: str,
        digest: Digest,
        byte_range: ByteRange | None,
        pathname: str,
        *,
        on_demand: bool = False,
    ) -> web.StreamResponse:
        """Through the piece store: the origin decides who may read, the store serves.

        ``on_demand`` (the accelerator's ranges) fetches only the pieces the range needs.
        """
        assert self.provider is not None
        authorization = request.headers.get("Authorization", "")
        granted = self.access.cached(host, name, digest, authorization)
        if request.method == "HEAD":
            if granted is None:
                granted = await self.access.check(host, name, digest, authorization)
            headers = blob_headers(digest)
            info = self.provider.store.lookup(str(digest))
            size = info.size if info is not None else granted.size
            if size is not None:
                headers["Content-Length"] = str(size)
            return web.Response(status=200, headers=headers)
        source = Source(host, name, authorization)
        check: asyncio.Task[Granted] | None = None
        if granted is None and not self._fetch_checks_access(digest):
            # the origin's yes alongside the download, not before it: no byte is sent
            # to the client until both are in
            check = asyncio.create_task(self.access.check(host, name, digest, authorization))
        try:
            info = await self._ensure(digest, source, byte_range, on_demand)
        except UpstreamRefusedError:
            if check is None or isinstance(await _outcome(check), BaseException):
                raise
            # someone else's fetch was refused, this client's own check passed: its turn
            info = await self._ensure(digest, source, byte_range, on_demand)
        except (CacheFullError, DiskFullError) as exc:
            # no room for it even after evicting what may go: the client gets it straight
            # from the origin, unstored (the origin checks its access itself)
            if check is not None:
                await _outcome(check)
            log.warning("no room to store %s (%s): relaying it unstored", digest, exc)
            path = f"/v2/{name}/blobs/{digest}"
            return await self._relay_blob(request, host, path, pathname, digest, byte_range)
        except BaseException:
            if check is not None and isinstance(outcome := await _outcome(check), BaseException):
                raise outcome from None
            raise
        if check is not None:
            await check
        elif granted is None and self.access.cached(host, name, digest, authorization) is None:
            await self.access.check(host, name, digest, authorization)  # joined another fetch
        return await stream_from_store(
            request,
            self.provider.store,
            digest,
            info,
            byte_range,
            metrics=self.metrics,
            audit=self.audit,
            pathname=pathname,
        )

    async def _ensure(
        self, digest: Digest, source: Source, byte_range: ByteRange | None, on_demand: bool
    ) -> BlobInfo:
        assert self.provider is not None
        if on_demand and byte_range is not None:
            return await self.provider.ensure_range(digest, source, byte_range)
        return await self.provider.ensure(digest, source)

    def _fetch_checks_access(self, digest: Digest) -> bool:
        """The provider's next fetch is a GET with the client's own credentials."""
        proves = getattr(self.provider, "fetch_checks_access", None)
        return bool(proves(digest)) if callable(proves) else False

    async def _head_blob(
        self, request: web.Request, host: str, path: str, digest: Digest
    ) -> web.StreamResponse:
        headers = {"Authorization": request.headers.get("Authorization", "")}
        resp = await self.upstream.request("HEAD", host, path, headers, follow_redirects=True)
        async with resp:
            if resp.status != 200:
                return await relay_upstream_error(resp, head=True)
            out = blob_headers(digest)
            if "Content-Length" in resp.headers:
                out["Content-Length"] = resp.headers["Content-Length"]
            return web.Response(status=200, headers=out)

    async def _relay_blob(
        self,
        request: web.Request,
        host: str,
        path: str,
        pathname: str,
        digest: Digest,
        byte_range: ByteRange | None,
        *,
        url: str | None = None,
    ) -> web.StreamResponse:
        headers = {"Authorization": request.headers.get("Authorization", "")}
        if byte_range is not None:
            headers["Range"] = byte_range.header()
        self.waiting += 1
        try:
            await self._limit.acquire()
        finally:
            self.waiting -= 1
        try:
            with self.audit.timed(HTTP_PREAD, pathname) as served:
                start = time.perf_counter()
                resp = await self.upstream.request(
                    "GET", host, path, headers, follow_redirects=True, url=url
                )
                async with resp:
                    if resp.status not in (200, 206):
                        return await relay_upstream_error(resp, head=False)
                    with self.audit.timed(DOWNLOAD, pathname) as fetched:
                        out = await self._stream(request, resp, digest, byte_range, served)
                        fetched.offset = served.offset
                        fetched.size = served.size
                    self.metrics.record(MetricType.DOWNLOAD, 0, time.perf_counter() - start)
                    self.metrics.record(MetricType.PREAD, 0, time.perf_counter() - start)
                    return out
        finally:
            self._limit.release()

    async def _stream(
        self,
        request: web.Request,
        resp: aiohttp.ClientResponse,
        digest: Digest,
        byte_range: ByteRange | None,
        record: AuditRecord,
    ) -> web.StreamResponse:
        """Copy the upstream body to the client (``relay.py``); ``record`` follows offset
        and bytes sent."""
        return await relay_body(
            request,
            resp,
            digest,
            byte_range,
            record,
            metrics=self.metrics,
            read_timeout=self.config.upstream.timeout,
        )

    # --- accelerator -------------------------------------------------------------

    async def handle_accelerator(self, request: web.Request) -> web.StreamResponse:
        accel = self.config.accelerator
        if not accel.enable:
            raise AccessDeniedError("the accelerator endpoint is disabled")
        if accel.loopback_only and not _is_loopback(request.remote):
            raise AccessDeniedError("the accelerator answers loopback clients only")
        raw = request.match_info["url"]
        if request.query_string:
            raw = f"{raw}?{request.query_string}"
        raw = re.sub(r"^(https?):/(?!/)", r"\1://", raw)  # a proxy may merge the slashes
        try:
            url = URL(raw, encoded=True)
        except ValueError as exc:
            raise AccessDeniedError("not a URL") from exc
        if url.scheme not in ("http", "https") or not url.host:
            raise AccessDeniedError("only http and https blob URLs are accelerated")
        if url.user is not None or url.password is not None:
            raise AccessDeniedError("blob URLs with credentials are refused")
        host = url.raw_authority
        allowed = accel.allowed_hosts or (
            self.config.upstream.default,
            *(r.host for r in self.config.upstream.registries),
        )
        if host not in allowed:
            raise AccessDeniedError(f"host {host} is not in the accelerator's allow-list")
        try:  # the scheme and the address too, as for every hop the mirror makes
            self.upstream.egress.check_hop(url, host, first=True)
        except EgressRefusedError as exc:
            raise AccessDeniedError(exc.message) from exc
        digest: Digest | None = None
        name = ""
        for pattern in _ACCEL_PATHS:
            m = pattern.fullmatch(url.raw_path)
            if m is not None:
                found = m.groupdict()
                if "name" in found:
                    name = check_name(found["name"])
                digest = parse_digest(found.get("digest") or f"sha256:{found['hex']}")
                break
        else:
            raise AccessDeniedError("only blob paths are accelerated")
        pathname = f"/{url}"
        registry_url = self.upstream.base_url(host)
        if self.provider is not None and name and f"{url.scheme}://{host}" == registry_url:
            # a registry blob URL: the same access check, then the swarm serves the range
            return await self._serve_stored(
                request, host, name, digest, _client_range(request), pathname, on_demand=True
            )
        return await self._relay_blob(
            request, host, url.raw_path, pathname, digest, _client_range(request), url=str(url)
        )


async def _outcome(task: asyncio.Task[Granted]) -> Granted | BaseException:
    """The check's result or its exception, without raising it."""
    try:
        return await task
    except Exception as exc:
        return exc


def _manifest_accept(request: web.Request) -> str:
    """Every Accept line of the client (one per media type), joined for the upstream.

    A client that names no manifest type at all (``*/*``) gets them all offered:
    distribution answers an OCI manifest only to a client that says it takes one.
    """
    accept = ", ".join(request.headers.getall("Accept", []))
    if not any(media in accept for media in ACCEPT_ALL.split(", ")):
        accept = f"{ACCEPT_ALL}, {accept}" if accept else ACCEPT_ALL
    return accept


def _client_range(request: web.Request) -> ByteRange | None:
    header = request.headers.get("Range")
    if not header:
        return None
    return parse_range(header)


def _is_loopback(remote: str | None) -> bool:
    if not remote:
        return False
    try:
        addr = ipaddress.ip_address(remote.split("%")[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped.is_loopback
    return addr.is_loopback


__all__ = ["Mirror", "RangeNotSatisfiableError"]
