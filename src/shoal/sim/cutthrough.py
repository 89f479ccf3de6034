"""Cut-through: reads that wait at a parent still fetching the piece, and how they go.

A read of a piece the parent does not hold yet, of a blob it is fetching, waits at the
parent, as the real peer server holds it (``piece_wait``). It goes when the piece lands
(store-and-forward, ``SimParams.chunk_bytes`` = 0, the model until the agents passed
pieces on by chunks) or, with ``chunk_bytes`` > 0, at an agent as soon as the agent's
own flow of that piece has brought its first chunk: the root publishes a sha256 per
64 KiB chunk with each piece's hash, an agent verifies each chunk as it arrives, and
its peer server streams the verified prefix to the children that asked. Such a flow
passes the bytes on as they come, so ``network.Network`` caps it at its upstream's rate
while the upstream runs; the root still serves whole pieces only (it publishes a
piece's hashes once the piece is whole).

Per (agent, blob, piece) one incoming flow is the one children stream from: the first
one started from a sender whose bytes pass the chunk hashes (a node of
``SimParams.bad`` fails the first chunk, so its bytes are never passed on: the reads
keep waiting for the piece, as before). When that flow ends without the piece (its
sender died, the request was cancelled as stalled), the flows it fed stop where they
are and wait, as the real server's stream does, for the agent's next fetch of the piece
to bring a chunk beyond what they sent, then go on at that fetch's rate (or from the
store, if the piece lands first), never from a fetch whose bytes come from their own
receiver (``cache.following.streamable``); if the agent gives the piece up, or died, or
``piece_wait`` (30 s) passes without a byte, they end and their children see
``UNREACHABLE``: a body under way cannot be cut short, so the real parent closes the
connection.

The moment a flow has brought the bytes something waits for is an event on the
engine's heap, pushed only for flows something waits on, again whenever the flow's
rate changes (the settle's ``schedule`` callback), and keyed by the flow's version so
that a stale one is skipped.
A streamed piece is charged to its receiver's CPU as a cut-through receive
(``CpuCosts.agent_in_cut``), as every read that waited at its parent is.

What it buys where each hop of a stripe tree held every piece back a piece time:
16 agents, 25 Mbit/s links and origin, 4 x 16 MiB (bound 21.47 s), p95 25.50 s
store-and-forward against 24.33 s by 64 KiB chunks at 512 KiB pieces, 29.52 s against
27.01 s at 1 MiB; at 32 agents 26.17 / 24.41 s and 30.87 / 27.10 s.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from typing import TYPE_CHECKING

from shoal.sim.network import INF, PAUSED, Flow
from shoal.swarm import FetchError

if TYPE_CHECKING:
    from shoal.sim.engine import SwarmSim

Key = tuple[int, int, int]  #: (parent, blob, piece)
#: seconds a stream whose bytes stopped coming waits for another fetch of the piece
#: (the peer server's ``piece_wait``); then the connection closes
PIECE_WAIT = 30.0


class CutThrough:
    """The reads waiting at parents, and the flows in that children may stream from."""

    def __init__(self, sim: SwarmSim, chunk: int) -> None:
        self.sim = sim
        self.chunk = chunk  #: bytes verified at once; 0 = store-and-forward
        self.waiting: dict[Key, list[int]] = defaultdict(list)
        self.cut: set[tuple[int, int, int, int]] = set()  # cut-through sends (host CPU)
        self.inflow: dict[Key, Flow] = {}  # per piece at an agent, the flow streamed from
        #: flows in whose bytes something waits for: at how many bytes, and the last
        #: (version, bytes) put on the heap for each
        self.pending: dict[Flow, float] = {}
        self.armed: dict[Flow, tuple[int, float]] = {}
        #: per piece at an agent, flows whose bytes in ended short: each waits for
        #: another fetch of the piece to bring this many bytes
        self.paused: dict[Key, list[tuple[Flow, float]]] = {}
        self.paused_at: dict[Flow, float] = {}  # since when each has waited
        #: (agent, blob) -> pieces whose first chunk is in, but not their hashes
        self.unhashed: dict[tuple[int, int], set[int]] = {}
        self.streamed = 0  #: flows started before their sender held the piece

    # ------------------------------------------------------------------ reads

    def read(self, c: int, b: int, parent: int, i: int) -> None:
        """``c`` asks ``parent`` (fetching blob ``b``) for piece ``i`` it does not hold."""
        key = (parent, b, i)
        if self.chunk and not self.sim.is_root[parent]:
            if self._source(key) is not None:
                self.go(parent, c, b, i)
                return
            self.waiting[key].append(c)
            self._arm(key)
            return
        self.waiting[key].append(c)

    def go(self, src: int, dst: int, b: int, i: int) -> None:
        """Send a piece whose read waited for it at ``src``."""
        if self.sim.p.host_cores:
            self.cut.add((src, dst, b, i))  # its receiver pays ``cpu.recv_cut``
        self.sim.send(src, dst, b, i)

    def landed(self, a: int, b: int, i: int) -> None:
        """Piece ``i`` is whole at ``a``: the reads still waiting for it go, and the
        flows that waited for more of it go on from the store."""
        if self.paused:
            for k, _ in self.paused.pop((a, b, i), ()):
                self.paused_at.pop(k, None)
                if self._alive(k):
                    self.sim.net.reattach(k, None)
        self._release(a, b, i)

    def _release(self, a: int, b: int, i: int) -> None:
        """The reads waiting at ``a`` for piece ``i`` go."""
        waiters = self.waiting.pop((a, b, i), None)
        if waiters:
            for w in waiters:
                if not self.sim.dead[w]:
                    self.go(a, w, b, i)

    def withdraw(self, c: int, b: int, parent: int, i: int) -> None:
        """``c`` cancelled its read before it went."""
        queue = self.waiting.get((parent, b, i))
        if queue and c in queue:
            queue.remove(c)

    def refuse(self, a: int, b: int, i: int, why: FetchError) -> None:
        """Nobody at ``a`` fetches piece ``i`` now (or ``a`` died): its readers hear it,
        and the flows waiting there for more of it end."""
        for w in self.waiting.pop((a, b, i), []):
            self.sim.failed_later(w, b, a, i, why)
        if self.paused:
            self._close([k for k, _ in self.paused.pop((a, b, i), ())], a, b, i)

    def charged_cut(self, key: tuple[int, int, int, int]) -> bool:
        """Whether the send ``key`` is a cut-through one (and forget it)."""
        if key in self.cut:
            self.cut.discard(key)
            return True
        return False

    # ------------------------------------------------------------------ streaming

    def upstream(self, src: int, dst: int, b: int, i: int) -> tuple[bool, Flow | None]:
        """Whether the piece can start on ``src -> dst`` now, and the flow it streams
        from (``None``: ``src`` holds it). When it cannot (the flow in ended before its
        first chunk), the read waits again, or is refused if nobody there fetches it."""
        sim = self.sim
        if not self.chunk or sim.is_root[src] or sim.holds(src, b, i):
            return True, None
        key = (src, b, i)
        up = self._source(key)
        if up is not None and not _fed_by(up, dst):
            self.streamed += 1
            return True, up
        if self._fetching(key):
            self.waiting[key].append(dst)
            self._arm(key)
        else:
            sim.failed_later(dst, b, src, i, FetchError.PIECE_MISSING)
        return False, None

    def started(self, f: Flow) -> None:
        """A flow into an agent started: children may stream from it."""
        if self.chunk and self._take(f):
            self._arm((f.dst, *f.payload))

    def ended(self, f: Flow, kids: list[Flow] | None) -> None:
        """``f`` into an agent ended; ``kids``: the flows it fed, if it ended short.
        Those wait for another fetch of the piece there to bring the bytes they have
        not sent yet (the peer server's ``wait_streamable``), or end, if there is none:
        the connection closes (``UNREACHABLE``)."""
        if not self.chunk:
            return
        sim = self.sim
        b, i = f.payload
        self.pending.pop(f, None)
        self.armed.pop(f, None)
        key = (f.dst, b, i)
        if self.inflow.get(key) is f:
            del self.inflow[key]
            for g in sim.net.downs[f.dst]:
                if g.payload == f.payload and self._take(g):
                    break
        if kids and not sim.holds(f.dst, b, i):
            if self._fetching(key):
                paused = self.paused.setdefault(key, [])
                for k in kids:
                    sim.net.reattach(k, PAUSED)
                    paused.append((k, _received(k, sim.now) + self.chunk))
                    self.paused_at[k] = sim.now
                    sim.after(PIECE_WAIT, functools.partial(self._gave_up, k, key, sim.now))
            else:
                self._close(kids, f.dst, b, i)
        self._arm(key)

    def scheduled(self, f: Flow) -> None:
        """``f``'s rate changed (``f.t0`` is now): its completion and byte events move."""
        self.sim.schedule(f)
        need = self.pending.get(f)
        if need is not None and f.rate > 0:
            self.sim.push_chunk(f.t0 + max(0.0, need - f.size + f.remaining) / f.rate, f)
            self.armed[f] = (f.version, need)

    def bytes_in(self, f: Flow) -> None:
        """``f`` brought the bytes something waits for: the reads waiting for its first
        chunk go (once the agent has the piece's hashes to check it with), paused flows
        whose next bytes are in go on."""
        self.pending.pop(f, None)
        key = (f.dst, *f.payload)
        if self.inflow.get(key) is not f:
            return
        got = _received(f, self.sim.now) + 1.0
        if self.waiting.get(key) and got >= self.chunk:
            if self._source(key) is f:
                self._release(*key)
            else:  # for the piece's hashes
                self.unhashed.setdefault(key[:2], set()).add(key[2])
        paused = self.paused.get(key)
        if paused:
            keep = []
            for k, need in paused:
                if self._alive(k):
                    if got >= need and not _fed_by(f, k.dst):
                        self.paused_at.pop(k, None)
                        self.sim.net.reattach(k, f)
                    else:
                        keep.append((k, need))
            self.paused[key] = keep
        self._arm(key)

    def hashes_in(self, a: int, b: int) -> None:
        """The root answered ``a``'s download of ``b``: reads waiting for the hashes of
        a piece whose first chunk is in go, if those came."""
        pieces = self.unhashed.pop((a, b), None)
        for i in pieces or ():
            key = (a, b, i)
            if self._source(key) is not None:
                self._release(a, b, i)
            elif key in self.inflow and self.waiting.get(key):
                self.unhashed.setdefault((a, b), set()).add(i)

    def _close(self, kids: list[Flow], a: int, b: int, i: int) -> None:
        """``a`` cannot finish what it was passing on: those connections close."""
        for k in kids:
            self.paused_at.pop(k, None)
            if self._alive(k):
                self.sim.end_flow(k)
                self.sim.failed_later(k.dst, b, a, i, FetchError.UNREACHABLE)

    def _gave_up(self, k: Flow, key: Key, since: float) -> None:
        """``piece_wait`` s without a byte for a paused flow: the connection closes."""
        if self.paused_at.get(k) == since:
            self.paused[key] = [(g, n) for g, n in self.paused.get(key, ()) if g is not k]
            self._close([k], *key)

    def _alive(self, k: Flow) -> bool:
        return self.sim.flows.get((k.src, k.dst, *k.payload)) is k

    def _fetching(self, key: Key) -> bool:
        a, b, i = key
        pk = self.sim.dl[a][b].picker
        return not self.sim.dead[a] and pk is not None and bool(pk.requested >> i & 1)

    def _take(self, f: Flow) -> bool:
        key = (f.dst, *f.payload)
        if f.size <= self.chunk or self.sim.bad[f.src] or key in self.inflow:
            return False
        self.inflow[key] = f
        return True

    def _source(self, key: Key) -> Flow | None:
        """The flow a read of ``key`` can stream from now: its first chunk is in, and
        the agent has the piece's hashes (they come with its chunk hashes)."""
        f = self.inflow.get(key)
        if f is None or _received(f, self.sim.now) < self.chunk - 1.0:
            return None
        a, b, i = key
        return f if self.sim.dl[a][b].book.known(i) is not None else None

    def _arm(self, key: Key) -> None:
        """Put on the heap when the flow into ``key``'s agent brings the next bytes
        something waits for: the first chunk for waiting reads (unless it is in and
        they wait for the hashes), a paused flow's next chunk."""
        f = self.inflow.get(key)
        if f is None:
            return
        now = self.sim.now
        got = _received(f, now) + 1.0
        need = INF
        if self.waiting.get(key) and got < self.chunk:
            need = float(self.chunk)
        elif self.waiting.get(key) and self._source(key) is None:
            self.unhashed.setdefault(key[:2], set()).add(key[2])
        for k, n in self.paused.get(key, ()):
            if not _fed_by(f, k.dst):
                need = min(need, n)
        if need == INF:
            self.pending.pop(f, None)
            return
        self.pending[f] = need
        if f.rate > 0 and self.armed.get(f) != (f.version, need):
            self.armed[f] = (f.version, need)
            self.sim.push_chunk(now + max(0.0, need - got + 1.0) / f.rate, f)


def _fed_by(f: Flow, node: int) -> bool:
    """Whether ``f``'s bytes come (through the flows it streams from) from ``node``:
    streaming them back to it would make each wait for the other (the peer server does
    not pass a piece back to the peer it comes from, ``cache.following.streamable``)."""
    seen: Flow | None = f
    while seen is not None:
        if seen.src == node:
            return True
        seen = seen.up
    return False


def _received(f: Flow, now: float) -> float:
    return f.size - f.remaining + f.rate * (now - f.t0)
