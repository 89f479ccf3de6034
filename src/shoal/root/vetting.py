"""Who may become a member of a swarm: a new peer must prove it is one.

Without this check, anyone holding the cluster secret can join a blob as thousands of
peers that do not exist (issue 17: 2,000 signed joins from addresses that answer
nothing), and the scheduler hands those out as parents: real agents then spend their
pulls timing out on them. So before a peer's first ``Join`` reaches the scheduler:

1. **It must complete the peer handshake** at the address it names: the root dials
   ``peer`` (its advertised ``host:port``) and runs the wire handshake (HMAC over both
   sides' nonces). A peer that answers becomes a member and is remembered
   (``VETTED_FOR`` seconds); one that fails it (refused, a wrong secret) is refused
   (``403``) and remembered as refused for ``REFUSED_FOR`` seconds, so asking again
   costs nothing. A peer naming the root itself is refused.
1b. **A peer that is only slow to answer is asked to join again**, not refused: the
   joiner waits ``ControlConfig.vetTimeout`` for the handshake, then gets ``503`` (the
   agent retries the join) while the probe goes on for up to ``PROBE_TRIES`` x
   ``vetTimeout`` in all; only a probe that has not finished by then refuses it (for
   ``TIMED_OUT_FOR``). A live agent on a loaded node answers late: 32 agents and their
   clients starting on 2 cores left 13 of them without a handshake in 3 s, and a
   refusal sent each to the origin for every blob (14.3 copies of the image).
2. **Each source address may claim at most ``ControlConfig.peersPerSource`` peers**
   (seen within ``SOURCE_WINDOW`` seconds): a node runs one agent, so one address
   claiming many identities is the Sybil pattern; the excess is answered ``429``
   before any probe is made. At most ``MAX_PROBES`` probes run at once.

The check is held here, in front of the scheduler, so ``shoal.swarm`` stays unaware of
it: a member it knows has always been vetted.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Awaitable, Callable

from shoal.config import ControlConfig
from shoal.errors import ShoalError, TooManyRequestsError
from shoal.peer.client import PeerClient, parse_address

log = logging.getLogger(__name__)

VETTED_FOR = 600.0
REFUSED_FOR = 30.0
#: a peer that only did not answer in time may be a live agent on a loaded node: it is
#: asked again soon (a black-holed Sybil costs a probe slot for vetTimeout each time)
TIMED_OUT_FOR = 5.0
#: a probe runs for this many ``vetTimeout`` at most; each join waits one of them (an
#: agent sends a join that was answered 503 up to ``DownloadPolicy.joinTries`` times)
PROBE_TRIES = 3
SOURCE_WINDOW = 600.0
MAX_PROBES = 32
#: bound on what is remembered (peers and sources), against a flood of identities
MAX_REMEMBERED = 100_000

Probe = Callable[[str], Awaitable[None]]


class PeerUnvettedError(ShoalError):
    """The peer did not complete the peer handshake at the address it named."""

    http_status = 403
    oci_code = "DENIED"


class PeerVettingError(ShoalError):
    """The peer has not completed the handshake yet (it may be loaded): join again."""

    http_status = 503
    oci_code = "UNAVAILABLE"


class Vetting:
    def __init__(
        self,
        secret: bytes,
        cfg: ControlConfig,
        *,
        node: Callable[[], str],
        probe: Probe | None = None,
        clock: Callable[[], float] = time.monotonic,
        peer_ssl: ssl.SSLContext | None = None,
    ) -> None:
        self.cfg = cfg
        self._secret = secret
        #: the peer network's TLS (``P2PConfig.tls``): the probe speaks what peers speak
        self._peer_ssl = peer_ssl
        self._node = node
        self._probe = probe or self._handshake
        self._clock = clock
        self._vetted: dict[str, float] = {}
        self._refused: dict[str, tuple[float, str]] = {}
        self._probing: dict[str, asyncio.Future[str]] = {}
        self._sources: dict[str, dict[str, float]] = {}
        self._slots = asyncio.Semaphore(MAX_PROBES)
        self.probes = 0
        self.capped = 0

    async def close(self) -> None:
        """Cancel the probes still running (the root is stopping)."""
        probing = list(self._probing.values())
        for fut in probing:
            fut.cancel()
        await asyncio.gather(*probing, return_exceptions=True)

    def __repr__(self) -> str:
        return (
            f"<Vetting [{len(self._vetted)} vetted, {len(self._refused)} refused, "
            f"{len(self._probing)} probing | {self.probes} probes, {self.capped} capped]>"
        )

    async def admit(self, peer: str, source: str) -> None:
        """Return when ``peer`` may join; raise ``PeerUnvettedError`` (403) or
        ``TooManyRequestsError`` (429) when it may not, ``PeerVettingError`` (503) when
        its handshake has not finished within ``vetTimeout`` (rule 1b)."""
        now = self._clock()
        if peer == self._node():
            raise PeerUnvettedError(f"{peer} is this root's own address")
        self._count_source(peer, source, now)
        until = self._vetted.get(peer)
        if until is not None and until > now:
            return
        refused = self._refused.get(peer)
        if refused is not None and refused[0] > now:
            raise PeerUnvettedError(refused[1])
        probing = self._probing.get(peer)
        if probing is None:
            # a task of its own: a joiner that gives up must not cancel the others' wait
            probing = asyncio.ensure_future(self._run_probe(peer))
            self._probing[peer] = probing
            probing.add_done_callback(lambda _: self._probing.pop(peer, None))
        try:
            async with asyncio.timeout(self.cfg.vet_timeout):
                why = await asyncio.shield(probing)
        except TimeoutError:
            raise PeerVettingError(
                f"peer {peer} has not completed the peer handshake within "
                f"{self.cfg.vet_timeout:g} s (ControlConfig.vetTimeout): join again"
            ) from None
        if why:
            raise PeerUnvettedError(why)

    def _count_source(self, peer: str, source: str, now: float) -> None:
        cap = self.cfg.peers_per_source
        if not cap:
            return
        peers = self._sources.setdefault(source, {})
        for old in [p for p, seen in peers.items() if seen < now - SOURCE_WINDOW]:
            del peers[old]
        if peer not in peers and len(peers) >= cap:
            self.capped += 1
            if self.capped == 1 or self.capped % 1000 == 0:
                log.warning(
                    "%s claims more than %d peers (ControlConfig.peersPerSource): refused "
                    "(%d refusals so far)",
                    source,
                    cap,
                    self.capped,
                )
            raise TooManyRequestsError(
                f"{source} already joined as {len(peers)} peers (ControlConfig.peersPerSource)"
            )
        if len(self._sources) > MAX_REMEMBERED:
            self._sources.clear()
            peers = self._sources.setdefault(source, {})
        peers[peer] = now

    async def _run_probe(self, peer: str) -> str:
        """'' when ``peer`` completed the handshake, else why not."""
        async with self._slots:
            self.probes += 1
            try:
                async with asyncio.timeout(PROBE_TRIES * self.cfg.vet_timeout):
                    await self._probe(peer)
            except (ShoalError, OSError, TimeoutError, ValueError) as exc:
                why = f"peer {peer} did not complete the peer handshake: {_reason(exc)}"
                now = self._clock()
                if len(self._refused) > MAX_REMEMBERED:
                    self._refused.clear()
                late = isinstance(exc, TimeoutError)
                self._refused[peer] = (now + (TIMED_OUT_FOR if late else REFUSED_FOR), why)
                log.warning("%s: refused as a member", why)
                return why
        now = self._clock()
        if len(self._vetted) > MAX_REMEMBERED:
            self._vetted = {p: t for p, t in self._vetted.items() if t > now}
        self._vetted[peer] = now + VETTED_FOR
        self._refused.pop(peer, None)
        return ""

    async def _handshake(self, peer: str) -> None:
        parse_address(peer)  # ValueError: not host:port
        async with PeerClient(
            self._secret,
            node=self._node(),
            connect_timeout=self.cfg.vet_timeout,
            ssl=self._peer_ssl,
        ) as client:
            await client.connection(peer)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    text = exc.message if isinstance(exc, ShoalError) else str(exc)
    return f"{type(exc).__name__}: {text[:160]}"
