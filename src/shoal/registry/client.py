"""A small registry pull client with the token dance, for ``shoal pull`` and the demo.

It talks to a registry directly or through a mirror (adding containerd's ``?ns=`` so the
mirror knows the upstream), answers ``401`` challenges the way runtimes do: ``Basic``
with the given credentials, ``Bearer`` by fetching a token from the challenge's realm.
"""

from __future__ import annotations

import base64
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import TracebackType

import aiohttp
from yarl import URL

from shoal.errors import AccessDeniedError, ShoalError, UpstreamUnavailableError
from shoal.oci.manifest import ACCEPT_ALL

_PARAM_RE = re.compile(r'(\w+)="([^"]*)"')


class RegistryClient:
    def __init__(
        self,
        registry: str,
        *,
        plain_http: bool = False,
        mirror: str | None = None,
        credentials: tuple[str, str] | None = None,
    ) -> None:
        self.registry = registry
        self.base = (mirror or f"{'http' if plain_http else 'https'}://{registry}").rstrip("/")
        self.params = {"ns": registry} if mirror else {}
        self.credentials = credentials
        self._auth: str | None = None
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=15, sock_read=120),
            auto_decompress=False,
        )

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._session.close()

    def _basic(self) -> str | None:
        if self.credentials is None:
            return None
        user, password = self.credentials
        return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    async def _answer_challenge(self, challenge: str, scope: str) -> None:
        scheme, _, rest = challenge.partition(" ")
        if scheme.lower() == "basic":
            if self.credentials is None:
                raise AccessDeniedError(f"{self.registry} wants credentials (use --user)")
            self._auth = self._basic()
            return
        if scheme.lower() != "bearer":
            raise AccessDeniedError(f"{self.registry}: unsupported auth scheme {scheme!r}")
        params = dict(_PARAM_RE.findall(rest))
        realm = params.get("realm")
        if not realm:
            raise AccessDeniedError(f"{self.registry}: Bearer challenge without realm")
        query = {
            k: v
            for k, v in (
                ("service", params.get("service")),
                ("scope", params.get("scope") or scope),
            )
            if v
        }
        headers = {}
        basic = self._basic()
        if basic:
            headers["Authorization"] = basic
        async with self._session.get(URL(realm).with_query(query), headers=headers) as resp:
            if resp.status != 200:
                raise AccessDeniedError(f"token from {realm}: HTTP {resp.status}")
            doc = await resp.json(content_type=None)
        token = doc.get("token") or doc.get("access_token")
        if not isinstance(token, str):
            raise AccessDeniedError(f"token from {realm}: no token in answer")
        self._auth = f"Bearer {token}"

    @asynccontextmanager
    async def get(
        self, repo: str, kind: str, ref: str, *, accept: str = ACCEPT_ALL
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """GET ``/v2/<repo>/<kind>/<ref>``, answering one auth challenge on the way."""
        url = URL(f"{self.base}/v2/{repo}/{kind}/{ref}").with_query(self.params)
        scope = f"repository:{repo}:pull"
        for attempt in range(2):
            headers = {"Accept": accept}
            if self._auth:
                headers["Authorization"] = self._auth
            try:
                resp = await self._session.get(url, headers=headers)
            except (aiohttp.ClientError, OSError) as exc:
                raise UpstreamUnavailableError(f"{self.base}: {exc}") from exc
            if resp.status == 401 and attempt == 0 and "WWW-Authenticate" in resp.headers:
                challenge = resp.headers["WWW-Authenticate"]
                resp.release()
                await self._answer_challenge(challenge, scope)
                continue
            if resp.status != 200:
                text = (await resp.text(errors="replace"))[:300]
                resp.release()
                if resp.status == 401:
                    raise AccessDeniedError(f"{repo}/{kind}/{ref}: unauthorized ({text})")
                raise ShoalError(f"{repo}/{kind}/{ref}: HTTP {resp.status} {text}")
            try:
                yield resp
            finally:
                resp.release()
            return
