"""Where the mirror and the root may connect to: one policy, checked on every hop.

A registry answers a blob request with a redirect, and whoever controls a registry (or
a name in a redirect) could point it anywhere: the cloud's metadata service, the
node's kubelet, another tenant's pod. So every hop, the first and each redirect, is
held to the same rules:

1. **Scheme** ``http`` or ``https``; no credentials in the URL.
2. **Listed authorities** (``UpstreamConfig.default``, every ``registries[].host``, the
   exact entries of their ``redirectHosts``, and hosts the accelerator was told to
   allow) are the operator's: they may live on any address, internal ones included. A
   listed registry is reached with its own scheme (``http`` only with ``plainHTTP``).
3. **Any other authority** is reached only when the policy lets it (``restrictToListed:
   false``, or a ``*.suffix`` pattern in the redirecting registry's ``redirectHosts``),
   over ``https`` (or the redirecting registry's own scheme), and **only at public
   addresses**: the address a connection is about to use is checked at connect time
   (``PolicyResolver``), after DNS, so a public-looking name that resolves to
   ``127.0.0.1`` or ``169.254.169.254`` does not get around it; literal addresses are
   checked before anything is sent.

What counts as internal (``internal_reason``): loopback, link-local, private (RFC 1918
and the rest of ``is_private``), unique-local and site-local IPv6, shared address space
(100.64/10), multicast, unspecified, reserved, and IPv4 addresses inside IPv6 forms
(mapped, NAT64 64:ff9b::/96, 6to4, Teredo) that are any of these.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from typing import Any

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

from shoal.config import UpstreamConfig
from shoal.errors import UpstreamUnavailableError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Authority = tuple[str, int]

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_SHARED = ipaddress.IPv4Network("100.64.0.0/10")


class EgressRefusedError(UpstreamUnavailableError):
    """A hop the policy refuses: nothing was sent there."""


class _RefusedAddress(OSError):
    """Raised inside the connector (aiohttp wraps it); carries the policy's reason."""


def internal_reason(ip: IPAddress) -> str | None:
    """Why ``ip`` is not a public address (``None`` when it is)."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded: ipaddress.IPv4Address | None = ip.ipv4_mapped
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is None and ip.sixtofour is not None:
            embedded = ip.sixtofour
        if embedded is None and ip.teredo is not None:
            embedded = ip.teredo[1]
        if embedded is not None:
            inner = internal_reason(embedded)
            return f"{inner} (inside IPv6)" if inner else None
        if ip.is_site_local:
            return "site-local"
    checks = (
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("unspecified", ip.is_unspecified),
        ("multicast", ip.is_multicast),
        ("shared address space", isinstance(ip, ipaddress.IPv4Address) and ip in _SHARED),
        ("unique-local" if ip.version == 6 else "private", ip.is_private),
        ("reserved", ip.is_reserved),
        ("not global", not ip.is_global),
    )
    for reason, hit in checks:
        if hit:
            return reason
    return None


def _ip(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.removeprefix("[").removesuffix("]").split("%")[0])
    except ValueError:
        return None


def authority_of(value: str, scheme: str) -> Authority:
    """``host[:port]`` as it appears in config, with the scheme's default port."""
    default = 80 if scheme == "http" else 443
    url = URL(f"{scheme}://{value}")
    return (url.host or "").lower(), url.port or default


def _url_authority(url: URL) -> Authority:
    return (url.host or "").lower(), url.port or (80 if url.scheme == "http" else 443)


class EgressPolicy:
    """The rules above, for one ``UpstreamConfig``; see the module docstring."""

    def __init__(self, config: UpstreamConfig) -> None:
        self.config = config
        #: listed authority -> the scheme it must be reached with
        self._listed: dict[Authority, str] = {}
        #: registry authority -> its ``*.suffix`` patterns
        self._patterns: dict[Authority, tuple[str, ...]] = {}
        if config.default and config.registry(config.default) is None:
            self._listed[authority_of(config.default, "https")] = "https"
        for reg in config.registries:
            scheme = "http" if reg.plain_http else "https"
            auth = authority_of(reg.host, scheme)
            self._listed[auth] = scheme
            patterns = []
            for entry in reg.redirect_hosts:
                if entry.startswith("*."):
                    patterns.append(entry[1:].lower())  # ".suffix"
                else:
                    self._listed.setdefault(authority_of(entry, scheme), scheme)
            self._patterns[auth] = tuple(patterns)

    def __repr__(self) -> str:
        mode = "listed only" if self.config.restrict_to_listed else "open, public addresses"
        return f"<EgressPolicy [{len(self._listed)} listed | {mode}]>"

    def also_listed(self, hosts: Iterable[str]) -> None:
        """Hosts the operator named elsewhere (the accelerator's ``allowedHosts``)."""
        for host in hosts:
            for scheme in ("https", "http"):
                self._listed.setdefault(authority_of(host, scheme), scheme)

    def listed(self, host: str, port: int) -> bool:
        return (host.lower(), port) in self._listed

    def check_hop(self, url: URL, registry: str, *, first: bool) -> None:
        """Refuse ``url`` (raise ``EgressRefusedError``) unless rules 1-3 allow it."""
        where = "request" if first else "redirect"
        if url.scheme not in ("http", "https") or not url.host:
            raise EgressRefusedError(f"{where} to {_show(url)} refused: not an http(s) URL")
        if url.user is not None or url.password is not None:
            raise EgressRefusedError(f"{where} to {_show(url)} refused: credentials in the URL")
        auth = _url_authority(url)
        scheme = self._listed.get(auth)
        if scheme is not None:
            if url.scheme != scheme:
                raise EgressRefusedError(
                    f"{where} to {_show(url)} refused: {auth[0]}:{auth[1]} is reached over {scheme}"
                )
            return
        reg_scheme = "http" if self._plain(registry) else "https"
        if not self._may_visit(auth, registry):
            raise EgressRefusedError(
                f"{where} to {_show(url)} refused: {auth[0]}:{auth[1]} is not a listed registry "
                f"or in the redirectHosts of {registry}"
            )
        if url.scheme != "https" and url.scheme != reg_scheme:
            raise EgressRefusedError(f"{where} to {_show(url)} refused: plain HTTP")
        ip = _ip(auth[0])
        if ip is not None:
            reason = internal_reason(ip)
            if reason is not None:
                raise EgressRefusedError(
                    f"{where} to {_show(url)} refused: {ip} is {reason} and not listed"
                )

    def check_addresses(self, host: str, port: int, addresses: list[str]) -> list[str]:
        """Of what ``host`` resolved to, the addresses a connection may use."""
        if self.listed(host, port):
            return addresses
        kept = []
        reasons = []
        for address in addresses:
            ip = _ip(address)
            reason = "not an address" if ip is None else internal_reason(ip)
            if reason is None:
                kept.append(address)
            else:
                reasons.append(f"{address} is {reason}")
        if not kept:
            raise _RefusedAddress(
                f"egress policy: {host}:{port} resolves only to internal addresses "
                f"({'; '.join(reasons) or 'none'}) and is not listed"
            )
        return kept

    def _plain(self, registry: str) -> bool:
        reg = self.config.registry(registry)
        return reg is not None and reg.plain_http

    def _may_visit(self, auth: Authority, registry: str) -> bool:
        if not self.config.restrict_to_listed:
            return True
        reg = self.config.registry(registry)
        if reg is None:
            return False
        scheme = "http" if reg.plain_http else "https"
        patterns = self._patterns.get(authority_of(reg.host, scheme), ())
        return any(auth[0].endswith(suffix) and len(auth[0]) > len(suffix) for suffix in patterns)


class PolicyResolver(AbstractResolver):
    """DNS through ``inner``, then the policy on every address (rule 3 at connect time)."""

    def __init__(self, policy: EgressPolicy, inner: AbstractResolver | None = None) -> None:
        self.policy = policy
        self.inner = inner if inner is not None else DefaultResolver()
        self.refused = 0

    def __repr__(self) -> str:
        return f"<PolicyResolver {self.policy!r} [refused {self.refused}]>"

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self.inner.resolve(host, port, family)
        try:
            kept = set(self.policy.check_addresses(host, port, [r["host"] for r in results]))
        except _RefusedAddress:
            self.refused += 1
            raise
        return [r for r in results if r["host"] in kept]

    async def close(self) -> None:
        await self.inner.close()


def refusal_in(exc: BaseException) -> str | None:
    """The policy's reason if ``exc`` (an aiohttp connect error) came from the resolver."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, _RefusedAddress):
            return str(current)
        inner: Any = getattr(current, "os_error", None)
        if isinstance(inner, _RefusedAddress):
            return str(inner)
        current = current.__cause__ or current.__context__
    return None


def _show(url: URL) -> str:
    """The URL for a message: no query (signed URLs carry secrets), no userinfo."""
    try:
        shown = url.with_query(None).with_fragment(None)
        if url.absolute and url.host:
            shown = shown.with_user(None)
    except ValueError:
        return "(unprintable URL)"
    return repr(str(shown)[:200])[1:-1]
