"""The agent's roots, checked at start and watched after: reachable, right port, same secret.

A wrong root list does not break an agent: every blob then falls back to the origin
(at most ``fallbackLimit`` at a time), which is slower than no shoal at all and says
nothing. So at start the agent checks every configured root and says in one line what
is wrong with it, readiness (``/readyz``) reflects it, and ``shoal_root_reachable``
shows it per root on the dashboard.

One check of a root, in order, each step naming what it found:

1. ``GET /healthz`` must answer with a root's health document. A refused connection,
   a name that does not resolve and a silence are *unreachable* (a root that is still
   starting looks like this, so it is re-checked). An answer that is not HTTP, or HTTP
   that is not a root's health, is the *wrong port*: the usual mistake is a root's peer
   port (``P2PConfig.p2pPort``, 65002) where its control port (``ProxyConfig.port``,
   65001) belongs.
   Over TLS (``ControlConfig.tls``, the default) the call speaks TLS with the
   cluster's CA (``caFile``), as the agent's control client does. A certificate that
   does not verify (another CA, a name outside its SANs) is *wrong TLS*; so is a root
   that serves plain HTTP while the agent expects TLS, or the other way round. When
   the TLS handshake fails, an unsigned plain ``GET /healthz`` tells a plain root, an
   agent's mirror and a peer port apart (it carries nothing secret).
2. A request signed with this agent's cluster secret (the state of a blob nobody has)
   must be accepted: a ``401`` is the *wrong secret*.

Wrong port, wrong TLS and wrong secret are configuration faults that waiting does not cure: they
make the agent unready until fixed. Unreachable roots make it unready only when no root
is usable at all. After start the watch follows the heartbeat (``agent/heartbeat.py``:
``Heartbeat.status``, per root the last failure in words, empty while it answers)
every ``FOLLOW`` seconds rather than calling the roots again itself; a root that is not
OK is checked again every ``RECHECK`` seconds, so a fix (a restarted root, a corrected
secret) is seen within that.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import TracebackType

import aiohttp
import msgspec

from shoal.agent.swarm import FALLBACK_HELP, FALLBACK_METRIC
from shoal.config import Config
from shoal.control.auth import HEADER, sign
from shoal.control.schema import Health
from shoal.control.tls import client_context
from shoal.errors import ConfigInvalidError
from shoal.observability import Metrics

log = logging.getLogger(__name__)

REACHABLE_METRIC = "shoal_root_reachable"
REACHABLE_HELP = (
    "1 when this agent can use the root: reachable, its control port, "
    "TLS that verifies, the same secret"
)
#: seconds between checks of a root that is not OK
RECHECK = 5.0
#: seconds between looks at the heartbeat's word on each root
FOLLOW = 1.0
#: the state of this blob is asked to prove the secret: no root has it, none will fetch it
PROBE_BLOB = "sha256:" + "0" * 64


class RootState(StrEnum):
    UNKNOWN = "unknown"  # not checked yet
    OK = "ok"
    UNREACHABLE = "unreachable"  # refused, unresolvable, silent: may heal by itself
    WRONG_PORT = "wrong-port"  # something answers that is not a root's control API
    WRONG_SECRET = "wrong-secret"  # the root refuses this agent's signature
    WRONG_TLS = "wrong-tls"  # its certificate does not verify, or TLS on one side only


#: configuration faults: waiting does not cure them
FAULTS = frozenset({RootState.WRONG_PORT, RootState.WRONG_SECRET, RootState.WRONG_TLS})


@dataclass(frozen=True, slots=True)
class RootStatus:
    root: str
    state: RootState
    #: one line for the log and ``/readyz``; empty when OK
    problem: str = ""


def split_root(root: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port``; ``ValueError`` naming what is wrong otherwise."""
    host, sep, port = root.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{root!r} is not host:port")
    if host.startswith("["):
        if not host.endswith("]") or len(host) < 3:
            raise ValueError(f"{root!r} is not host:port")
        return host, int(port)
    if ":" in host or any(c.isspace() or c in "/@?#" for c in host):
        raise ValueError(f"{root!r} is not host:port (an IPv6 address goes in brackets)")
    return host, int(port)


def check_roots(roots: tuple[str, ...]) -> None:
    """Refuse a root list the agent could never use, at start, in one line."""
    for i, root in enumerate(roots):
        try:
            split_root(root)
        except ValueError as exc:
            raise ConfigInvalidError(f"config: P2PConfig.roots[{i}]: {exc}") from exc
    seen: set[str] = set()
    for root in roots:
        if root in seen:
            raise ConfigInvalidError(f"config: P2PConfig.roots: {root} is listed twice")
        seen.add(root)


class RootWatch:
    """What this agent knows of each root; owns the session and the re-check task."""

    def __init__(self, config: Config, secret: bytes, metrics: Metrics) -> None:
        self.roots = config.p2p.roots
        check_roots(self.roots)
        self._secret = secret
        self._metrics = metrics
        self._timeout = min(config.p2p.root_timeout, 3.0)
        self._p2p_port = config.p2p.p2p_port
        self._control = config.control
        # the control client warns of the plain development mode already: once is enough
        self._tls = client_context(config.control) if config.control.tls else None
        self._scheme = "https" if self._tls is not None else "http"
        self.status = {r: RootStatus(r, RootState.UNKNOWN) for r in self.roots}
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._checked = asyncio.Event()
        self._heartbeat: Mapping[str, str] = {}
        for root in self.roots:
            metrics.set_gauge(REACHABLE_METRIC, REACHABLE_HELP, 0.0, root=root)

    def __repr__(self) -> str:
        counts: dict[str, int] = {}
        for s in self.status.values():
            counts[s.state.value] = counts.get(s.state.value, 0) + 1
        states = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
        return f"<RootWatch [{states or 'no roots'}] ready={self.ready}>"

    async def __aenter__(self) -> RootWatch:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self._timeout),
            connector=aiohttp.TCPConnector(
                limit_per_host=2,
                force_close=True,
                ssl=self._tls if self._tls is not None else False,
            ),
        )
        self._task = asyncio.create_task(self._run(), name="root-watch")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    # --- what readiness and the log see ------------------------------------------------

    @property
    def ready(self) -> bool:
        """No root with a configuration fault, and at least one usable (or none listed)."""
        if not self.roots:
            return True
        states = [s.state for s in self.status.values()]
        return not any(s in FAULTS for s in states) and RootState.OK in states

    def why_not_ready(self) -> str:
        """One line: why ``ready`` is false ("" when it is true)."""
        if self.ready:
            return ""
        states = [s.state for s in self.status.values()]
        if any(s in FAULTS for s in states):
            return "a root is misconfigured"
        if all(s is RootState.UNKNOWN for s in states):
            return "roots not checked yet"
        return "no root is reachable"

    def summary(self) -> list[str]:
        """One line per root, for ``/readyz``."""
        return [
            f"{s.root}: {s.state.value}" + (f": {s.problem}" if s.problem else "")
            for s in self.status.values()
        ]

    async def wait_checked(self) -> None:
        """Until every root was checked once."""
        await self._checked.wait()

    # --- fed by the heartbeat ------------------------------------------------------------

    def follow(self, heartbeat: Mapping[str, str]) -> None:
        """Take each root's state from the heartbeat's ``root -> failure ("" if none)``."""
        self._heartbeat = heartbeat

    def report(self, root: str, why: str) -> None:
        """The heartbeat's word on ``root``: ``why`` is empty when it answered."""
        if why:
            self.down(root, why)
        else:
            self.up(root)

    def up(self, root: str) -> None:
        """The heartbeat's health call answered. Clears an unreachable root; a root with
        a configuration fault stays faulty until a full check says otherwise (the
        health call is unsigned, so it cannot vouch for the secret)."""
        current = self.status.get(root)
        if current is not None and current.state in (RootState.UNKNOWN, RootState.UNREACHABLE):
            self._set(RootStatus(root, RootState.OK))

    def down(self, root: str, why: str) -> None:
        """A call to the root failed; the next check says why precisely."""
        current = self.status.get(root)
        if current is not None and current.state is RootState.OK:
            self._set(RootStatus(root, RootState.UNREACHABLE, why))

    # --- checking ------------------------------------------------------------------------

    async def _run(self) -> None:
        await asyncio.gather(*(self.refresh(r) for r in self.roots))
        self._checked.set()
        ok = sum(1 for s in self.status.values() if s.state is RootState.OK)
        if self.roots:
            log.info("roots: %d of %d usable", ok, len(self.roots))
        loop = asyncio.get_running_loop()
        recheck = loop.time() + RECHECK
        while True:
            await asyncio.sleep(FOLLOW)
            for root, why in list(self._heartbeat.items()):
                self.report(root, why)
            if loop.time() >= recheck:
                recheck = loop.time() + RECHECK
                pending = [r for r, s in self.status.items() if s.state is not RootState.OK]
                await asyncio.gather(*(self.refresh(r) for r in pending))

    async def refresh(self, root: str) -> RootStatus:
        status = await self.check(root)
        self._set(status)
        return status

    def _set(self, status: RootStatus) -> None:
        before = self.status.get(status.root)
        self.status[status.root] = status
        ok = status.state is RootState.OK
        value = 1.0 if ok else 0.0
        self._metrics.set_gauge(REACHABLE_METRIC, REACHABLE_HELP, value, root=status.root)
        if before is not None and before.state == status.state and before.problem == status.problem:
            return
        if ok:
            if before is not None and before.state is not RootState.UNKNOWN:
                log.info("root %s: usable again", status.root)
        else:
            log.warning("root %s: %s", status.root, status.problem)

    async def check(self, root: str) -> RootStatus:
        """One full check of ``root`` (see the module docstring)."""
        if self._session is None:
            raise RuntimeError("RootWatch is not open")
        _, port = split_root(root)
        where = "its control port (ProxyConfig.port, 65001 by default)"
        peer_hint = (
            f"; {port} is the peer port (P2PConfig.p2pPort): a root serves agents on {where}"
            if port == self._p2p_port
            else f"; a root serves agents on {where}"
        )
        try:
            async with self._session.get(f"{self._scheme}://{root}/healthz") as resp:
                body = await resp.read()
                status = resp.status
        except aiohttp.ClientConnectorDNSError:
            return RootStatus(root, RootState.UNREACHABLE, "the name does not resolve")
        except aiohttp.ClientConnectorCertificateError as exc:
            return RootStatus(
                root,
                RootState.WRONG_TLS,
                f"its certificate does not verify against ControlConfig.caFile "
                f"{self._control.ca_file}: {_ssl_reason(exc.certificate_error)} (the roots' "
                "certificate must come from the cluster CA and name the address agents dial)",
            )
        except aiohttp.ClientSSLError:
            # TLS did not come about: what is there, asked in plain HTTP (nothing secret)
            return await self._not_tls(root, peer_hint)
        except aiohttp.ClientConnectorError as exc:
            err = exc.os_error.errno
            why = os.strerror(err).lower() if err else type(exc.os_error).__name__
            return RootStatus(root, RootState.UNREACHABLE, f"cannot connect: {why}")
        except TimeoutError:
            return RootStatus(
                root,
                RootState.UNREACHABLE,
                f"no answer to GET /healthz within {self._timeout:g} s" + peer_hint,
            )
        except (aiohttp.ClientResponseError, aiohttp.ServerDisconnectedError):
            if self._tls is None and await self._speaks_tls(root):
                return RootStatus(
                    root,
                    RootState.WRONG_TLS,
                    "serves the control API over TLS while this agent has ControlConfig.tls: "
                    "false (set it the same on agents and roots)",
                )
            return RootStatus(
                root,
                RootState.WRONG_PORT,
                "not a root's control API: the answer is not HTTP, as from a peer port" + peer_hint,
            )
        except (aiohttp.ClientError, OSError) as exc:
            return RootStatus(root, RootState.UNREACHABLE, f"{type(exc).__name__}: {exc}"[:200])
        return await self._healthy(root, status, body, peer_hint)

    async def _healthy(self, root: str, status: int, body: bytes, peer_hint: str) -> RootStatus:
        """``GET /healthz`` answered ``status``: a root's health, then the secret."""
        try:
            if status != 200:
                raise ValueError(status)
            msgspec.json.decode(body, type=Health)
        except (ValueError, msgspec.DecodeError):
            return RootStatus(
                root,
                RootState.WRONG_PORT,
                f"not a root's control API: GET /healthz answered HTTP {status}" + peer_hint,
            )
        return await self._check_secret(root)

    async def _not_tls(self, root: str, peer_hint: str) -> RootStatus:
        """The TLS handshake failed: a root in plain HTTP, another HTTP server (an agent's
        mirror), or something that is not HTTP at all (a peer port)?"""
        assert self._session is not None
        try:
            async with self._session.get(f"http://{root}/healthz") as resp:
                body = await resp.read()
                status = resp.status
        except (aiohttp.ClientResponseError, aiohttp.ServerDisconnectedError):
            return RootStatus(
                root,
                RootState.WRONG_PORT,
                "not a root's control API: the answer is not HTTP, as from a peer port "
                "(no TLS either)" + peer_hint,
            )
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return RootStatus(
                root, RootState.UNREACHABLE, f"TLS handshake failed: {type(exc).__name__}"
            )
        try:
            if status == 200:
                msgspec.json.decode(body, type=Health)
                return RootStatus(
                    root,
                    RootState.WRONG_TLS,
                    "serves the control API in plain HTTP while this agent has "
                    "ControlConfig.tls: true (set it the same on agents and roots)",
                )
        except msgspec.DecodeError:
            pass
        return RootStatus(
            root,
            RootState.WRONG_PORT,
            f"not a root's control API: GET /healthz answered HTTP {status} without TLS"
            + peer_hint,
        )

    async def _speaks_tls(self, root: str) -> bool:
        """Whether ``root`` completes a TLS handshake (unverified: only to name the
        mistake of a plain agent facing a TLS root; nothing is sent after it)."""
        host, port = split_root(root)
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        try:
            async with asyncio.timeout(self._timeout):
                _, writer = await asyncio.open_connection(host.strip("[]"), port, ssl=ctx)
        except (OSError, TimeoutError):
            return False
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()
        return True

    async def _check_secret(self, root: str) -> RootStatus:
        assert self._session is not None
        path = f"/swarm/v1/blobs/{PROBE_BLOB}?known=0"
        headers = {HEADER: sign(self._secret, "GET", path, b"", time.time())}
        try:
            async with self._session.get(f"{self._scheme}://{root}{path}", headers=headers) as resp:
                status = resp.status
                await resp.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return RootStatus(
                root, RootState.UNREACHABLE, f"signed request failed: {type(exc).__name__}"
            )
        if status == 401:
            return RootStatus(
                root,
                RootState.WRONG_SECRET,
                "refuses this agent's signature: the cluster secret differs "
                "(P2PConfig.secret or secretFile must be the same on every agent and root)",
            )
        if status != 200:
            return RootStatus(
                root, RootState.WRONG_PORT, f"answered a signed request with HTTP {status}"
            )
        return RootStatus(root, RootState.OK)


def _ssl_reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return exc.verify_message
    return str(exc)[:160]


def export_fallback_counter(metrics: Metrics) -> None:
    """``shoal_origin_fallback_total`` at 0 from the start, so an alert on its rate and
    the dashboard see the series before the first fallback, not only after it."""
    metrics.inc(FALLBACK_METRIC, FALLBACK_HELP, 0.0)
