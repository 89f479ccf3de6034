"""The agent's side of the control API: signed JSON requests to a root, over TLS
verified against the cluster CA (``ControlConfig``; plain only in the development mode)."""

from __future__ import annotations

from types import TracebackType
from typing import TypeVar

import aiohttp
import msgspec

from shoal.config import ControlConfig
from shoal.control.preheat import PollAnswer, PollRequest
from shoal.control.schema import (
    BlobState,
    Health,
    HoldRequest,
    JoinRequest,
    ParentsRequest,
    UpdateRequest,
    UpdateResponse,
)
from shoal.control.signed import SignedSession
from shoal.errors import UpstreamUnavailableError

T = TypeVar("T")


#: connections one agent keeps to one root at most
CONNECTIONS_PER_ROOT = 16


class RootUnavailableError(UpstreamUnavailableError):
    """The root did not answer, or answered with an error; ``busy``: it did not answer
    in time (it may be alive and loaded), as opposed to refusing or failing."""

    busy = False


class ControlClient:
    def __init__(
        self, secret: bytes, *, timeout: float = 5.0, control: ControlConfig | None = None
    ) -> None:
        """``control``: TLS settings (default: ``ControlConfig()``, TLS on)."""
        # kept-alive connections, a bounded number per root: a burst of calls (a join per
        # layer, hash asks, reports) waits here instead of opening dozens of connections
        # at once against a root every agent is calling
        self._signed = SignedSession(
            secret, control, timeout=timeout, connect_timeout=3.0, per_root=CONNECTIONS_PER_ROOT
        )
        self.scheme = self._signed.scheme

    def __repr__(self) -> str:
        return f"<ControlClient {self.scheme}>"

    async def __aenter__(self) -> ControlClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._signed.close()

    async def _call(
        self, root: str, method: str, path: str, body: bytes, kind: type[T], held: float = 0.0
    ) -> T:
        try:
            status, payload = await self._signed.call(root, method, path, body, held=held)
            if status != 200:
                said = f"root {root} answered HTTP {status}: {payload[:200]!r}"
                error = RootUnavailableError(said)
                error.busy = status == 503  # it runs and asks to be called again
                raise error
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            error = RootUnavailableError(f"root {root} unreachable: {type(exc).__name__}")
            error.busy = isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError)
            raise error from exc
        try:
            return msgspec.json.decode(payload, type=kind)
        except msgspec.DecodeError as exc:
            raise RootUnavailableError(f"root {root} sent an invalid answer") from exc

    async def join(self, root: str, req: JoinRequest) -> BlobState:
        return await self._call(root, "POST", "/swarm/v1/join", msgspec.json.encode(req), BlobState)

    async def parents(self, root: str, req: ParentsRequest) -> BlobState:
        return await self._call(
            root, "POST", "/swarm/v1/parents", msgspec.json.encode(req), BlobState
        )

    async def update(self, root: str, req: UpdateRequest) -> UpdateResponse:
        """Reports in; parent sets the root pushed to this agent since, out."""
        return await self._call(
            root, "POST", "/swarm/v1/update", msgspec.json.encode(req), UpdateResponse
        )

    async def hold(self, root: str, req: HoldRequest) -> None:
        await self._call(root, "POST", "/swarm/v1/hold", msgspec.json.encode(req), dict)

    async def preheat_poll(self, root: str, req: PollRequest) -> PollAnswer:
        """This agent's preheat progress in, its preheat work out (``shoal.root.preheat``)."""
        body = msgspec.json.encode(req)
        # a watch is held up to its wait at the root: the call may take that much longer
        return await self._call(root, "POST", "/preheat/v1/poll", body, PollAnswer, req.wait)

    async def health(self, root: str) -> Health:
        return await self._call(root, "GET", "/healthz", b"", Health)

    async def blob(self, root: str, digest: str, known: int, *, wait: float = 0.0) -> BlobState:
        """The blob's state with hashes (and chunk hashes) from piece ``known`` on; with
        ``wait``, the root holds the answer up to that many seconds until it has a hash
        beyond ``known``."""
        query = f"known={known}&chunks=1" + (f"&wait={wait:g}" if wait > 0 else "")
        return await self._call(root, "GET", f"/swarm/v1/blobs/{digest}?{query}", b"", BlobState)


__all__ = ["ControlClient", "RootUnavailableError"]
