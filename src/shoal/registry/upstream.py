"""The client side of the mirror: requests to upstream registries, one place.

One ``aiohttp`` session per registry host, with that registry's TLS settings (plain
HTTP, an extra CA, or no verification for a self-signed test registry). Redirects are
followed by hand for blobs, because registries hand blobs out from object storage under
another host, and the client's ``Authorization`` must not travel to that other host.
Every hop, the first included, goes through the egress policy (``egress.py``): a
registry that is not served is refused before anything is sent, a redirect to a host
the policy refuses is not followed, and the connector's resolver refuses internal
addresses of unlisted names at connect time. Connection failures become
``UpstreamUnavailableError`` here, at the boundary.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from types import TracebackType

import aiohttp
from aiohttp.abc import AbstractResolver
from yarl import URL

from shoal.config import RegistryConfig, UpstreamConfig
from shoal.errors import UpstreamUnavailableError, UpstreamUnknownError
from shoal.registry.egress import EgressPolicy, EgressRefusedError, PolicyResolver, refusal_in

MAX_REDIRECTS = 5
#: headers of the client's request that go upstream unchanged
FORWARD_HEADERS = ("Authorization", "Accept", "Range", "If-None-Match", "User-Agent")


class UpstreamClient:
    def __init__(self, config: UpstreamConfig, *, resolver: AbstractResolver | None = None) -> None:
        self.config = config
        self.egress = EgressPolicy(config)
        #: the DNS under the policy's resolver; tests set one they control before the
        #: first request (sessions take it when they are made)
        self.dns = resolver
        self._also: set[str] = set()
        self._sessions: dict[str, aiohttp.ClientSession] = {}
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=min(config.timeout, 15.0), sock_read=config.timeout
        )

    async def __aenter__(self) -> UpstreamClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            await session.close()

    def base_url(self, host: str) -> str:
        reg = self.config.registry(host)
        scheme = "http" if reg is not None and reg.plain_http else "https"
        return f"{scheme}://{host}"

    def allowed(self, host: str) -> bool:
        return self.config.allowed(host)

    def allow_hosts(self, hosts: tuple[str, ...]) -> None:
        """Hosts the operator allowed elsewhere (the accelerator's ``allowedHosts``):
        requests may name them, and they count as listed for the egress policy."""
        self._also.update(hosts)
        self.egress.also_listed(hosts)

    def check_allowed(self, host: str) -> None:
        if not self.allowed(host):
            raise UpstreamUnknownError(f"registry {host} is not served by this mirror")

    def _session(self, host: str) -> aiohttp.ClientSession:
        session = self._sessions.get(host)
        if session is None or session.closed:
            reg = self.config.registry(host)
            connector = aiohttp.TCPConnector(
                ssl=_ssl_for(reg),
                limit=0,
                ttl_dns_cache=60,
                enable_cleanup_closed=True,
                resolver=PolicyResolver(self.egress, self.dns),
            )
            session = aiohttp.ClientSession(
                connector=connector,
                timeout=self._timeout,
                auto_decompress=False,
                read_bufsize=4 << 20,
                skip_auto_headers=("Accept-Encoding",),
            )
            self._sessions[host] = session
        return session

    async def request(
        self,
        method: str,
        host: str,
        path: str,
        headers: Mapping[str, str],
        *,
        follow_redirects: bool = False,
        url: str | None = None,
    ) -> aiohttp.ClientResponse:
        """Send ``method`` to ``host`` (or the absolute ``url``); the caller releases it.

        ``host`` must be a registry this client serves (``UpstreamUnknownError``). With
        ``follow_redirects`` a 3xx is followed up to ``MAX_REDIRECTS`` times, each hop
        checked by the egress policy (``EgressRefusedError``: nothing is sent there), and
        ``Authorization`` is dropped as soon as the target leaves the registry's origin.
        """
        if host not in self._also:
            self.check_allowed(host)
        session = self._session(host)
        target = URL(url) if url is not None else URL(self.base_url(host) + path, encoded=True)
        origin = target.origin()
        send = {k: v for k, v in headers.items() if v}
        for hop in range(MAX_REDIRECTS + 1):
            self.egress.check_hop(target, host, first=hop == 0)
            if target.origin() != origin:
                send.pop("Authorization", None)
            try:
                resp = await session.request(method, target, headers=send, allow_redirects=False)
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                refused = refusal_in(exc)
                if refused is not None:
                    raise EgressRefusedError(f"upstream {host}: {refused}") from exc
                raise UpstreamUnavailableError(
                    f"upstream {host} unreachable: {type(exc).__name__}: {exc}"
                ) from exc
            if not follow_redirects or resp.status not in (301, 302, 303, 307, 308):
                return resp
            location = resp.headers.get("Location")
            resp.release()
            if not location:
                raise UpstreamUnavailableError(f"upstream {host} redirected without a Location")
            try:
                target = target.join(URL(location, encoded=True))
            except ValueError as exc:
                raise EgressRefusedError(f"upstream {host} redirected to a malformed URL") from exc
            if resp.status == 303:
                method = "GET"
        raise UpstreamUnavailableError(f"upstream {host}: more than {MAX_REDIRECTS} redirects")


def _ssl_for(reg: RegistryConfig | None) -> ssl.SSLContext | bool:
    if reg is None:
        return True
    if reg.insecure_skip_verify:
        return False
    if reg.ca_file:
        ctx = ssl.create_default_context()
        ctx.load_verify_locations(cafile=reg.ca_file)
        return ctx
    return True


def forwarded_headers(incoming: Mapping[str, str]) -> dict[str, str]:
    return {k: incoming[k] for k in FORWARD_HEADERS if k in incoming}
