"""The root's control API: agents join blob swarms, report progress, ask for parents.

Each handler turns a signed JSON body into ``shoal.swarm`` messages for the scheduler
and its decisions back into JSON. The first join of a blob starts the origin fetch
(with the joining agent's forwarded credentials) and opens the blob's swarm with this
root as its seed; every piece the fetch stores is announced to the scheduler at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

import msgspec
from aiohttp import web
from aiohttp.web import Response

from shoal.control import codec
from shoal.control.auth import HEADER, verify
from shoal.control.schema import (
    FailedReport,
    Health,
    HoldRequest,
    JoinRequest,
    ParentsRequest,
    UpdateRequest,
    UpdateResponse,
)
from shoal.errors import ShoalError
from shoal.oci.digest import Digest, parse_digest
from shoal.registry.origin_fetch import Source
from shoal.registry.responses import error_response
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

MAX_BODY = 4 << 20
#: seconds a hash ask may be held (below the agents' control timeout)
MAX_HASH_WAIT = 3.0
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ControlAPI:
    def __init__(self, root: RootLike, secret: bytes) -> None:
        self.root = root
        self._secret = secret

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=MAX_BODY)
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

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            if request.path != "/healthz":
                body = await request.read()
                verify(
                    self._secret,
                    request.headers.get(HEADER),
                    request.method,
                    request.path_qs,
                    body,
                    time.time(),
                )
            return await handler(request)
        except ShoalError as exc:
            return error_response(exc)
        except (msgspec.ValidationError, msgspec.DecodeError, ValueError) as exc:
            return web.json_response(
                {"errors": [{"code": "BAD_REQUEST", "message": str(exc)[:300]}]}, status=400
            )

    async def health(self, _: web.Request) -> web.Response:
        health = Health(self.root.peer_id, self.root.incarnation)
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
        return self._view(digest, known, None, failure)

    def _view(
        self,
        blob: str,
        known: int,
        assignment: Assignment | None,
        failure: tuple[BlobFailure, str] | None,
    ) -> web.Response:
        view = self.root.view(blob, known, failure)
        if assignment is not None:
            view = dataclasses.replace(view, parents=assignment.parents)
        state = codec.view_wire(view)
        return web.Response(body=msgspec.json.encode(state), content_type="application/json")


class RootLike(Protocol):
    """What the API needs of the root service."""

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
        """What the root knows of ``blob``, hashes from piece ``known`` on."""
        ...

    async def wait_piece(self, blob: str, index: int) -> None:
        """Until the root holds piece ``index`` (and so its hash), or it never will."""
        ...
