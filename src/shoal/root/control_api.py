"""The root's control API: agents join blob swarms, report progress, ask for parents.

Each handler turns a signed JSON body into ``shoal.swarm`` messages for the scheduler
and its decisions back into JSON. The first join of a blob starts the origin fetch
(with the joining agent's forwarded credentials) and opens the blob's swarm with this
root as its seed; every piece the fetch stores is announced to the scheduler at once.

The transport, in front of every handler (``_middleware``), in this order:

1. the signature is checked **from the headers alone** (``shoal.control.auth``): an
   unsigned or forged request is answered ``401`` and its connection closed before one
   byte of its body is read;
2. the body must have a ``Content-Length`` within its route's limit (``BODY_LIMITS``;
   ``413`` otherwise, still unread), arrive within ``BODY_TIMEOUT`` and hash to what
   the signature says;
3. its nonce must be new (a replay within the skew window is ``401``);
4. a ``join`` or ``hold`` from a peer the root has not vetted waits for the peer's
   handshake (``shoal.root.vetting``): no unvetted peer reaches the scheduler.

The API is served over TLS with the cluster CA's certificate (``ControlConfig``), and
the origin a join names is held to this root's ``UpstreamConfig`` like every other
fetch (the upstream client refuses registries it does not serve).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol

import msgspec
from aiohttp import web
from aiohttp.web import Response

from shoal.config import Config
from shoal.control import codec
from shoal.control.auth import HEADER, NonceMemory, SignatureInvalidError, verify_header
from shoal.control.schema import (
    FailedReport,
    Health,
    HoldRequest,
    JoinRequest,
    ParentsRequest,
    UpdateRequest,
    UpdateResponse,
)
from shoal.control.tls import ServerTLS, server_tls
from shoal.errors import ShoalError
from shoal.httpserver import SERVER_LIMITS, TLS_CONTEXT, ServerLimits
from shoal.oci.digest import Digest, parse_digest
from shoal.peer.tls import peer_tls
from shoal.registry.origin_fetch import Source
from shoal.registry.responses import error_response
from shoal.root import preheat_api
from shoal.root.preheat_api import JobApiOffError, PreheatAPI
from shoal.root.vetting import Vetting
from shoal.swarm import (
    AskParents,
    Assignment,
    BlobFailure,
    BlobNotJoinedError,
    BlobView,
    PeerNotJoinedError,
    RootMessage,
    SwarmError,
)

log = logging.getLogger(__name__)

#: bytes a signed body may have, by route (a hold lists up to 10,000 digests, an
#: update a burst of reports); a route not named takes no body
BODY_LIMITS = {
    "/swarm/v1/join": 256 << 10,
    "/swarm/v1/parents": 64 << 10,
    "/swarm/v1/update": 4 << 20,
    "/swarm/v1/hold": 1 << 20,
    **preheat_api.BODY_LIMITS,
}
MAX_BODY = max(BODY_LIMITS.values())
#: seconds a signed body may take to arrive once its headers have
BODY_TIMEOUT = 10.0
#: routes whose peer is vetted before the request goes on (they make it a member)
VETTED = frozenset({"/swarm/v1/join", "/swarm/v1/hold", preheat_api.POLL})
#: connections one client address may hold by default (an agent keeps at most 16)
PER_CLIENT = 32
#: seconds between looks at the certificate files for a renewed certificate
TLS_RELOAD_INTERVAL = 60.0
#: seconds a hash ask may be held (below the agents' control timeout)
MAX_HASH_WAIT = 3.0
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _Peer(msgspec.Struct):
    """The one field of a join or hold the transport reads: who wants in."""

    peer: str


class BodyRefusedError(ShoalError):
    http_status = 413
    oci_code = "SIZE_INVALID"


class ControlAPI:
    def __init__(self, root: RootLike, secret: bytes, preheat: PreheatAPI | None = None) -> None:
        self.root = root
        self._secret = secret
        self.preheat = preheat
        self.nonces = NonceMemory()
        self.tls: ServerTLS | None = server_tls(root.config.control)
        tls = peer_tls(root.config.p2p)
        self.vetting = Vetting(
            secret,
            root.config.control,
            node=lambda: root.peer_id,
            peer_ssl=None if tls is None else tls.client,
        )
        self.unsigned = 0

    def __repr__(self) -> str:
        scheme = "https" if self.tls is not None else "http (development)"
        return (
            f"<ControlAPI {scheme} [{self.unsigned} refused unsigned | {self.nonces!r} | "
            f"{self.vetting!r}]>"
        )

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=MAX_BODY)
        app[SERVER_LIMITS] = ServerLimits.of(
            self.root.config.proxy, per_client=PER_CLIENT, read_bufsize=16 << 10
        )
        if self.tls is not None:
            app[TLS_CONTEXT] = self.tls.context
        app.cleanup_ctx.append(self._background)
        if self.preheat is not None:
            app.cleanup_ctx.append(self.preheat.background)
            app.on_shutdown.append(self.preheat.shutdown)
            app.add_routes(self.preheat.routes())
        app.add_routes(
            [
                web.post("/swarm/v1/join", self.join),
                web.post("/swarm/v1/parents", self.parents),
                web.post("/swarm/v1/update", self.update),
                web.post("/swarm/v1/hold", self.hold),
                web.get("/swarm/v1/blobs/{digest}", self.blob),
                web.get("/healthz", self.health),
            ]
        )
        return app

    async def _background(self, _: web.Application) -> AsyncIterator[None]:
        reload = asyncio.create_task(self._reload_tls(), name="control-tls-reload")
        yield
        reload.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reload
        await self.vetting.close()

    async def _reload_tls(self) -> None:
        while self.tls is not None:
            await asyncio.sleep(TLS_RELOAD_INTERVAL)
            try:
                if self.tls.reload():
                    log.info("control API certificate reloaded")
            except ShoalError as exc:
                log.warning("%s (keeping the previous certificate)", exc.message)

    async def _authenticate(self, request: web.Request) -> None:
        """Steps 1-4 of the module docstring; raises to refuse."""
        now = time.time()
        secret = self._secret
        if self.preheat is not None:  # the job API is signed with the operator credential
            secret = self.preheat.secret_for(request.path, self._secret)
        signed = verify_header(
            secret, request.headers.get(HEADER), request.method, request.path_qs, now
        )
        limit = BODY_LIMITS.get(request.path, 0) if request.method == "POST" else 0
        length = request.content_length
        if request.body_exists and length is None:
            raise BodyRefusedError("a body needs a Content-Length")
        if length is not None and length > limit:
            raise BodyRefusedError(f"{length} bytes is more than {request.path} takes ({limit})")
        body = b""
        if length:
            async with asyncio.timeout(BODY_TIMEOUT):
                body = await request.read()
        signed.check_body(body)
        self.nonces.claim(signed, now)
        if request.path in VETTED:
            peer = msgspec.json.decode(body, type=_Peer).peer
            await self.vetting.admit(peer, request.remote or "")

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            if request.path != "/healthz":
                await self._authenticate(request)
            return await handler(request)
        except (SignatureInvalidError, BodyRefusedError, JobApiOffError) as exc:
            # the body stays unread: close, so nobody sends it to us after all
            if isinstance(exc, SignatureInvalidError):
                self.unsigned += 1
            resp = error_response(exc)
            resp.force_close()
            return resp
        except TimeoutError:
            resp = error_response(BodyRefusedError(f"body not received in {BODY_TIMEOUT:.0f} s"))
            resp.force_close()
            return resp
        except ShoalError as exc:
            return error_response(exc)
        except (msgspec.ValidationError, msgspec.DecodeError, ValueError) as exc:
            return web.json_response(
                {"errors": [{"code": "BAD_REQUEST", "message": str(exc)[:300]}]}, status=400
            )

    async def health(self, _: web.Request) -> web.Response:
        generation = 0 if self.preheat is None else self.preheat.generation
        health = Health(self.root.peer_id, self.root.incarnation, generation)
        return web.Response(body=msgspec.json.encode(health), content_type="application/json")

    async def hold(self, request: web.Request) -> web.Response:
        req = msgspec.json.decode(await request.read(), type=HoldRequest)
        self.root.seen(req.peer)
        for blob in req.blobs[:10000]:
            self.root.hold(req.peer, parse_digest(blob))
        return web.json_response({})

    async def join(self, request: web.Request) -> web.Response:
        req = msgspec.json.decode(await request.read(), type=JoinRequest)
        digest = parse_digest(req.blob)
        self.root.seen(req.peer)
        failure = await self.root.open_blob(
            digest, Source(req.source.host, req.source.name, req.source.authorization)
        )
        if failure is not None:
            return self._view(req.blob, req.known, None, failure)
        assignment = self.root.schedule(codec.join(req))
        if assignment is not None:
            log.debug(
                "%s joins %s: parents %s",
                req.peer,
                req.blob[:19],
                [p.peer for p in assignment.parents],
            )
        return self._view(req.blob, req.known, assignment, None)

    async def parents(self, request: web.Request) -> web.Response:
        req = msgspec.json.decode(await request.read(), type=ParentsRequest)
        self.root.seen(req.peer)
        failure = self.root.failure(req.blob)
        assignment = None
        if failure is None:
            try:
                assignment = self.root.schedule(AskParents(req.peer, req.blob, req.want))
            except PeerNotJoinedError:
                failure = (BlobFailure.NOT_JOINED, f"{req.peer} is not in the swarm")
            except BlobNotJoinedError:
                failure = (BlobFailure.UNKNOWN_BLOB, "no swarm for it here")
        return self._view(req.blob, req.known, assignment, failure)

    async def update(self, request: web.Request) -> web.Response:
        req = msgspec.json.decode(await request.read(), type=UpdateRequest)
        self.root.seen(req.peer)
        forgotten: set[str] = set()
        for report in req.reports:
            if isinstance(report, FailedReport):
                log.debug("%s reports %s of %s: %s", req.peer, report.parent, report.blob[:19],
                          report.reason)  # fmt: skip
            try:
                self.root.schedule(codec.report(req.peer, report))
            except (PeerNotJoinedError, BlobNotJoinedError) as exc:
                log.debug("report from %s: %s", req.peer, exc)
                blob = getattr(report, "blob", "")
                if blob:
                    forgotten.add(blob)
            except (SwarmError, codec.CodecError) as exc:
                log.debug("report from %s ignored: %s", req.peer, exc)
        pushed = [codec.pushed_wire(a) for a in self.root.drain(req.peer)]
        for p in pushed:
            log.debug(
                "%s moved in %s: parents %s", req.peer, p.blob[:19], [o.peer for o in p.parents]
            )
        answer = UpdateResponse(pushed, sorted(forgotten))
        return Response(body=msgspec.json.encode(answer), content_type="application/json")

    async def blob(self, request: web.Request) -> web.Response:
        """The blob's state; ``wait=S`` holds the answer (at most ``MAX_HASH_WAIT`` s)
        until piece ``known``'s hash exists, so an agent waiting for hashes does not poll."""
        digest = request.match_info["digest"]
        try:
            known = int(request.query.get("known", "0"))
            wait = min(float(request.query.get("wait", "0")), MAX_HASH_WAIT)
        except ValueError as exc:
            raise web.HTTPBadRequest(text="known and wait must be numbers") from exc
        failure = self.root.failure(digest)
        if wait > 0 and failure is None:
            view = self.root.view(digest, known, None)
            count = -(-view.size // view.piece_size) if view.piece_size else 0
            if not view.hashes and not view.complete and 0 <= known < count:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self.root.wait_piece(digest, known)
                failure = self.root.failure(digest)
        return self._view(digest, known, None, failure, chunks=request.query.get("chunks") == "1")

    def _view(
        self,
        blob: str,
        known: int,
        assignment: Assignment | None,
        failure: tuple[BlobFailure, str] | None,
        *,
        chunks: bool = False,
    ) -> web.Response:
        """``chunks``: with the pieces' chunk hashes (only an agent that asks for them
        can read them; an older one refuses fields it does not know)."""
        view = self.root.view(blob, known, failure)
        if not chunks and view.chunks:
            view = dataclasses.replace(view, chunks=())
        if assignment is not None:
            view = dataclasses.replace(view, parents=assignment.parents)
        state = codec.view_wire(view)
        return web.Response(body=msgspec.json.encode(state), content_type="application/json")


class RootLike(Protocol):
    """What the API needs of the root service."""

    config: Config
    peer_id: str
    incarnation: str

    def seen(self, peer: str) -> None: ...

    def hold(self, peer: str, digest: Digest) -> None:
        """``peer`` holds the whole blob: a parent as soon as its swarm opens."""
        ...

    async def open_blob(self, digest: Digest, source: Source) -> tuple[BlobFailure, str] | None:
        """Open (or find) the blob's swarm; a failure says why it cannot be had."""
        ...

    def failure(self, blob: str) -> tuple[BlobFailure, str] | None: ...

    def schedule(self, msg: RootMessage) -> Assignment | None: ...

    def drain(self, peer: str) -> list[Assignment]:
        """Parent sets pushed to ``peer`` since it last asked."""
        ...

    def view(self, blob: str, known: int, failure: tuple[BlobFailure, str] | None) -> BlobView:
        """What the root knows of ``blob``, hashes (and chunk hashes) from piece ``known`` on."""
        ...

    async def wait_piece(self, blob: str, index: int) -> None:
        """Until the root holds piece ``index`` (and so its hash), or it never will."""
        ...
