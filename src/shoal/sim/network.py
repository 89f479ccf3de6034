"""Flow-level network model: links shared among active transfers, time passed in.

Each node has an upload capacity and a download capacity in bytes/s (the download side
already folded with the node's disk write speed: what it receives must be written). A
transfer (``Flow``) goes from one node's uplink to another's downlink. Its rate is

    rate(f) = min(up_share(src, f), down_share(dst, f))

where ``up_share`` is a water-filling (max-min fair split) of the sender's uplink over
its flows, each capped by the receiving end's even share (its downlink over its flow
count), and ``down_share`` is a water-filling of the receiver's downlink over its flows,
each capped by its ``up_share``. This is exact max-min fairness for one transfer, flows
sharing one link, a slow receiver beside a fast one, chains and stars (the tests work
them by hand), and it never exceeds a capacity: a flow's rate is at most its share on
both links, and the shares on a link sum to at most its capacity. In a mesh it
approximates global max-min: leftovers are handed on one link deep, not through the
whole graph.

Why not exact global max-min: with 10,000 nodes each holding ~10 flows, the whole mesh
is one connected component, and progressive filling over it on every one of ~10^7
flow starts and ends is out of reach in Python. Here a start or end recomputes only the
two links it touches (``depth=1``), or also the links of their neighbours' flows
(``depth=2``, closer to global max-min, about deg times the work). Changes made at
the same simulated time are settled once (``settle``), which batches the many events
that happen at equal times. A flow's remaining bytes are advanced lazily, only when its
rate changes; its completion sits in the caller's heap keyed by a version number, so a
stale entry is recognised and skipped.

**Host CPU** (``cores`` > 0, opt-in): every node runs on one host with ``cores`` cores,
as in ``shoal bench``, where 16 agents, a root and 16 clients share one 2-core
machine. Each node charges CPU per byte it sends (``send_cost``, s/byte) and per byte
it receives (``recv_cost``; for an agent that includes serving the bytes to its
runtime and the runtime's own work), so a flow costs ``k = send_cost(src) +
recv_cost(dst)`` CPU-seconds per byte. When the flows at their link rates would need
more CPU than the host has, ``D = sum(k x link_rate) > cores``, every flow runs at
``cores / D`` of its link rate: processor sharing, each busy process slowed alike,
which is what a saturated scheduler does to processes doing the same work. Under the
cap, rates are the links' alone. The costs are measured, not fitted
(``bench/cpu_cost.py``; docs/sim.md).

**Upstream caps** (an agent passing a piece on as it arrives, ``cutthrough.py``): a
flow started with ``up=`` sends the bytes of another flow as they come, so it never
runs faster than that flow: its demand in its sender's water-filling is capped at the
upstream's link rate (``link``; with the host CPU both are then slowed alike), and what
it leaves goes to the sender's other flows. A change of an upstream's rate re-fills the
links of the flows it caps where the cap binds, round after round down a chain (at
most ``ROUNDS`` per ``settle``; what is left is picked up at the next one). With no
capped flow a settle is the one it was before, float for float.
"""

from __future__ import annotations

from collections.abc import Callable

EPS = 1e-9
#: passes of an upstream cap's change down chains of capped flows per ``settle``
ROUNDS = 32
INF = float("inf")


class Flow:
    __slots__ = (
        "cost",
        "dshare",
        "dst",
        "finish",
        "kids",
        "link",
        "payload",
        "rate",
        "remaining",
        "size",
        "src",
        "t0",
        "up",
        "ushare",
        "version",
        "want",
    )

    def __init__(
        self, src: int, dst: int, size: float, now: float, payload: tuple[int, int]
    ) -> None:
        self.src = src
        self.dst = dst
        self.size = size
        self.remaining = size
        self.t0 = now
        self.rate = 0.0
        self.ushare = 0.0
        self.dshare = 0.0
        self.finish = float("inf")
        self.version = 0
        self.payload = payload
        self.want = 0.0  #: the rate the links allow (before any CPU limit), bytes/s
        self.cost = 0.0  #: CPU seconds per byte, both ends together (host CPU model)
        self.up: Flow | None = None  #: the flow whose bytes this one passes on (a cap)
        self.kids: list[Flow] | None = None  #: the flows this one caps
        self.link = 0.0  #: with kids: the rate the links allow it, their cap (bytes/s)

    def __repr__(self) -> str:
        return (
            f"<Flow {self.src}->{self.dst} [{self.remaining:.0f}/{self.size:.0f} B left, "
            f"{self.rate / 1e6:.1f} MB/s]>"
        )


def waterfill(capacity: float, caps: list[float]) -> list[float]:
    """Max-min fair split of ``capacity`` among demands capped at ``caps``."""
    n = len(caps)
    if n == 0:
        return []
    even = capacity / n
    if min(caps) >= even:
        return [even] * n
    order = sorted(range(n), key=caps.__getitem__)
    out = [0.0] * n
    left = capacity
    k = n
    for idx in order:
        share = left / k
        c = caps[idx]
        if c < share:
            out[idx] = c
            left -= c
            k -= 1
        else:
            for j in order[n - k :]:
                out[j] = share
            break
    return out


#: the upstream of a flow that waits for bytes no flow brings now (rate 0)
PAUSED = Flow(-1, -1, 0.0, 0.0, (-1, -1))


def _allowed(f: Flow) -> float:
    """The rate the links (and the upstream, if any) allow ``f``, bytes/s."""
    rate = min(f.ushare, f.dshare)
    return rate if f.up is None else min(rate, f.up.link)


def _capped_caps(
    fl: dict[Flow, None], down: list[float], downs: list[dict[Flow, None]]
) -> list[float]:
    """A sender's flows' demands: the receiver's even share, or the upstream's rate."""
    caps = []
    for f in fl:
        c = down[f.dst] / len(downs[f.dst])
        up = f.up
        if up is not None and up.link < c:
            c = up.link
        caps.append(c)
    return caps


class Network:
    """Nodes with up/down capacities and the flows between them."""

    def __init__(self, *, depth: int = 1, cores: float = 0.0) -> None:
        self.up: list[float] = []
        self.down: list[float] = []
        self.send_cost: list[float] = []
        self.recv_cost: list[float] = []
        self.cores = cores  #: host cores shared by every node; 0 = CPU not modelled
        self.demand = 0.0  #: cores the flows would use at their link rates
        self.cpu_factor = 1.0  #: every flow runs at this share of its link rate
        self._live: dict[Flow, None] = {}  # every flow, kept only when CPU is modelled
        # each node's flows out and in, in start order; dicts, not lists, so that ending
        # one of the origin's 30,000 flows (the standard pull at 10,000 nodes) is O(1)
        self.ups: list[dict[Flow, None]] = []
        self.downs: list[dict[Flow, None]] = []
        self.depth = depth
        self._dirty_up: set[int] = set()
        self._dirty_down: set[int] = set()
        self._recheck: dict[Flow, None] = {}  # capped flows whose cap went
        self.capped = 0  #: flows with an upstream cap
        self._capped: list[int] = []  # per node, its flows out with an upstream cap
        self.flows = 0

    def __repr__(self) -> str:
        cpu = f", CPU {self.demand:.2f}/{self.cores:g} cores" if self.cores else ""
        return f"<Network [{len(self.up)} nodes, {self.flows} flows{cpu}]>"

    def add_node(
        self, up: float, down: float, *, send_cost: float = 0.0, recv_cost: float = 0.0
    ) -> int:
        """A node with link capacities (bytes/s) and CPU costs (s/byte, with ``cores``)."""
        self.up.append(up)
        self.down.append(down)
        self.send_cost.append(send_cost)
        self.recv_cost.append(recv_cost)
        self.ups.append({})
        self.downs.append({})
        self._capped.append(0)
        return len(self.up) - 1

    def start(
        self,
        src: int,
        dst: int,
        size: float,
        now: float,
        payload: tuple[int, int],
        cost: float | None = None,
        up: Flow | None = None,
    ) -> Flow:
        """A transfer; ``cost`` (CPU s/byte) overrides the two nodes' send + receive costs;
        ``up``: the flow whose bytes it passes on, which it never outruns."""
        f = Flow(src, dst, size, now, payload)
        if up is not None:
            self._attach(f, up)
        self.ups[src][f] = None
        self.downs[dst][f] = None
        self.flows += 1
        if self.cores:
            f.cost = self.send_cost[src] + self.recv_cost[dst] if cost is None else cost
            self._live[f] = None
        self._touch(src, dst)
        return f

    def stop(self, f: Flow, now: float) -> None:
        """End ``f`` (completed or cancelled); the rates around it change at ``settle``."""
        del self.ups[f.src][f]
        del self.downs[f.dst][f]
        self.flows -= 1
        if self._recheck:
            self._recheck.pop(f, None)
        if f.up is not None:
            self._detach(f)
        if f.kids is not None:  # it ended: the flows it capped run free
            for k in list(f.kids):
                self._detach(k)
                self._dirty_up.add(k.src)
                self._recheck[k] = None
            f.kids = None
        f.version += 1  # any heap entry for it is now stale
        f.remaining = max(0.0, f.remaining - f.rate * (now - f.t0))
        f.t0 = now
        f.rate = 0.0
        if self.cores:
            del self._live[f]
            self.demand = self.demand - f.cost * f.want if self._live else 0.0
            f.want = 0.0
        self._touch(f.src, f.dst)

    def reattach(self, f: Flow, up: Flow | None) -> None:
        """``f`` passes on ``up``'s bytes from now (``None``: runs free; ``PAUSED``: waits
        for bytes with no flow bringing them)."""
        if f.up is not None:
            self._detach(f)
        if up is not None:
            self._attach(f, up)
        self._dirty_up.add(f.src)
        self._recheck[f] = None

    def _attach(self, f: Flow, up: Flow) -> None:
        f.up = up
        if up is not PAUSED:
            if up.kids is None:
                up.kids = []
                up.link = _allowed(up)
            up.kids.append(f)
        self.capped += 1
        self._capped[f.src] += 1

    def _detach(self, f: Flow) -> None:
        up = f.up
        assert up is not None
        if up.kids is not None:
            up.kids.remove(f)
        f.up = None
        self.capped -= 1
        self._capped[f.src] -= 1

    def _touch(self, src: int, dst: int) -> None:
        self._dirty_up.add(src)
        self._dirty_down.add(dst)
        if self.depth > 1:
            self._dirty_up.update([g.src for g in self.downs[dst]])
            self._dirty_down.update([g.dst for g in self.ups[src]])

    def settle(self, now: float, schedule: Callable[[Flow], None]) -> None:
        """Recompute rates around every link touched since the last call.

        ``schedule(flow)`` is called for each flow whose completion time changed (its
        ``finish`` and ``version`` are already updated); push it on the event heap.
        """
        up, down, ups, downs = self.up, self.down, self.ups, self.downs
        changed: dict[Flow, None] = {}  # ordered: runs are reproducible
        if self._recheck:
            changed.update(self._recheck)
            self._recheck.clear()
        capped = self._capped
        for _ in range(ROUNDS):
            dirty_up, dirty_down = self._dirty_up, self._dirty_down
            self._dirty_up, self._dirty_down = set(), set()
            moved: list[Flow] = []  # flows with kids whose shares changed
            for n in dirty_up:
                fl = ups[n]
                if not fl:
                    continue
                if capped[n]:
                    caps = _capped_caps(fl, down, downs)
                else:
                    caps = [down[f.dst] / len(downs[f.dst]) for f in fl]
                for f, s in zip(fl, waterfill(up[n], caps), strict=True):
                    if s != f.ushare:
                        f.ushare = s
                        changed[f] = None
                        dirty_down.add(f.dst)
                        if f.kids is not None:
                            moved.append(f)
            for n in dirty_down:
                fl = downs[n]
                if not fl:
                    continue
                for f, s in zip(fl, waterfill(down[n], [f.ushare for f in fl]), strict=True):
                    if s != f.dshare:
                        f.dshare = s
                        changed[f] = None
                        if f.kids is not None:
                            moved.append(f)
            if not moved or not self._pass_caps(moved, changed):
                break
        factor = 1.0
        todo = changed
        if self.cores:
            for f in changed:
                want = min(f.ushare, f.dshare) if f.up is None else _allowed(f)
                self.demand += f.cost * (want - f.want)
                f.want = want
            factor = min(1.0, self.cores / self.demand) if self.demand > 0 else 1.0
            if abs(factor - self.cpu_factor) > 1e-12:
                self.cpu_factor = factor
                todo = self._live  # the host's share changed for every flow
        for f in todo:
            rate = f.ushare if f.ushare < f.dshare else f.dshare
            if f.up is not None and f.up.link < rate:
                rate = f.up.link
            rate *= factor
            if rate == f.rate:
                continue
            f.remaining -= f.rate * (now - f.t0)
            f.t0 = now
            f.rate = rate
            f.version += 1
            f.finish = now + f.remaining / rate if rate > 0 else float("inf")
            schedule(f)

    def _pass_caps(self, moved: list[Flow], changed: dict[Flow, None]) -> bool:
        """Hand the new rates of ``moved`` to the flows they cap; whether any link must
        be filled again. A kid's link is re-filled only where its cap binds, before or
        after (below both, the water-filling gives it the same share)."""
        again = False
        while moved:
            f = moved.pop()
            kids = f.kids
            if kids is None:
                continue
            new, old = _allowed(f), f.link
            if new == old:
                continue
            f.link = new
            low = min(old, new) * (1 - 1e-12)
            for k in kids:
                changed[k] = None
                if k.ushare >= low:
                    self._dirty_up.add(k.src)
                    again = True
                if k.kids is not None:
                    moved.append(k)
        return again

    def rate_out(self, node: int) -> float:
        return sum(f.rate for f in self.ups[node])
