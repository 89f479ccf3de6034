"""The hosts of one benchmark run: network namespaces joined by a bridge, shaped links.

Every run owns a name prefix (``shb<pid>``) and one /24 of the test prefix 10.77.0.0/16.
The bridge lives in a namespace of its own, so the root namespace gets no interface and
no address at all; the run's /24 is black-holed there so that nothing addressed to the
test hosts can leak to the default route. What a run made is written to a state file
first, so a later run (or ``shoal bench --cleanup``) can remove a crashed run's leftovers
by its prefix.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
from dataclasses import dataclass, field
from pathlib import Path

from shoal.bench.errors import BenchError, CommandFailedError
from shoal.bench.proc import in_netns, run
from shoal.bench.shaping import BURST_MS, QUEUE_MS, shape

TEST_PREFIX = "10.77"
STATE_DIR = Path("/run/shoal-bench")
NS_PREFIX = "shb"
BRIDGE = "br0"
#: first host number of the nodes; origin .1, proxy .2, roots from .3
FIRST_NODE = 10


@dataclass(frozen=True, slots=True)
class Host:
    """One emulated machine: its namespace, its address and its link's rate."""

    role: str
    netns: str
    ip: str
    rate_bit: int
    port: str  # the bridge-side end of its veth


@dataclass(slots=True)
class Cluster:
    """``N`` nodes, an origin, a proxy host and ``roots`` root hosts, on one bridge.

    ``up()`` builds it, ``down()`` removes all of it (idempotent, synchronous, safe to
    call from a ``finally`` after Ctrl-C).
    """

    nodes_n: int
    roots_n: int
    rate_bit: int
    origin_rate_bit: int
    workdir: Path
    prefix: str = field(default_factory=lambda: f"{NS_PREFIX}{os.getpid()}")
    state_dir: Path = STATE_DIR
    #: the process whose death makes the leftovers fair game for ``cleanup_leftovers``
    owner_pid: int = field(default_factory=os.getpid)
    #: leave the run's files (logs, pulled copies) for a post-mortem
    keep_workdir: bool = False
    #: tbf queue and burst of every link, ms of traffic (``shaping``)
    queue_ms: float = QUEUE_MS
    burst_ms: float = BURST_MS
    subnet: str = ""
    origin: Host | None = None
    proxy: Host | None = None
    roots: list[Host] = field(default_factory=list)
    nodes: list[Host] = field(default_factory=list)
    _made_ns: list[str] = field(default_factory=list)
    _route: str | None = None
    #: the neighbour-table limits found before ``up()`` raised them, restored by ``down()``
    _neigh: dict[str, int] = field(default_factory=dict)

    def __repr__(self) -> str:
        return (
            f"<Cluster {self.prefix} {self.subnet or 'down'} | nodes={len(self.nodes)} "
            f"roots={len(self.roots)} namespaces={len(self._made_ns)}>"
        )

    @property
    def bridge_ns(self) -> str:
        return f"{self.prefix}-br"

    @property
    def state_file(self) -> Path:
        return self.state_dir / f"{self.prefix}.json"

    def hosts(self) -> list[Host]:
        out = [h for h in (self.origin, self.proxy) if h is not None]
        return out + self.roots + self.nodes

    def up(self) -> None:
        if self.nodes_n + FIRST_NODE > 254:
            raise BenchError(f"at most {254 - FIRST_NODE} nodes fit one run's /24")
        if self.roots_n > FIRST_NODE - 3:
            raise BenchError(f"at most {FIRST_NODE - 3} roots")
        self._claim_subnet()
        hosts = self.nodes_n + self.roots_n + 2
        self._neigh = raise_neighbour_limits(2 * hosts * hosts)
        self._save()
        base = self.subnet.rsplit(".", 1)[0]
        self._add_ns(self.bridge_ns)
        run(in_netns(self.bridge_ns, ["ip", "link", "add", BRIDGE, "type", "bridge"]))
        run(in_netns(self.bridge_ns, ["ip", "link", "set", BRIDGE, "up"]))
        # bridged frames must not walk the host's iptables (br_netfilter), costing CPU
        with contextlib.suppress(CommandFailedError):
            run(in_netns(self.bridge_ns, ["sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=0"]))
        self.origin = self._add_host("origin", f"{base}.1", self.origin_rate_bit)
        self.proxy = self._add_host("proxy", f"{base}.2", self.rate_bit)
        self.roots = [
            self._add_host(f"root{i}", f"{base}.{3 + i}", self.rate_bit)
            for i in range(self.roots_n)
        ]
        self.nodes = [
            self._add_host(f"n{i:02d}", f"{base}.{FIRST_NODE + i}", self.rate_bit)
            for i in range(self.nodes_n)
        ]

    def _claim_subnet(self) -> None:
        """Take the first free /24: adding its black-hole route is the lock between runs."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        for third in range(256):
            subnet = f"{TEST_PREFIX}.{third}.0/24"
            self.subnet = subnet
            self._save()
            try:
                run(["ip", "route", "add", "blackhole", subnet])
            except CommandFailedError:
                continue
            self._route = subnet
            self._save()
            return
        raise BenchError(f"no free /24 left in {TEST_PREFIX}.0.0/16")

    def _add_ns(self, name: str) -> None:
        self._made_ns.append(name)
        self._save()
        run(["ip", "netns", "add", name])
        run(in_netns(name, ["ip", "link", "set", "lo", "up"]))
        with contextlib.suppress(CommandFailedError):
            run(in_netns(name, ["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]))

    def _add_host(self, role: str, ip: str, rate_bit: int) -> Host:
        ns = f"{self.prefix}-{role}"
        port = f"p-{role}"
        self._add_ns(ns)
        run(
            in_netns(
                self.bridge_ns,
                [
                    "ip",
                    "link",
                    "add",
                    port,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    "eth0",
                    "netns",
                    ns,
                ],
            )
        )
        run(in_netns(self.bridge_ns, ["ip", "link", "set", port, "master", BRIDGE, "up"]))
        run(in_netns(ns, ["ip", "addr", "add", f"{ip}/24", "dev", "eth0"]))
        run(in_netns(ns, ["ip", "link", "set", "eth0", "up"]))
        shape(ns, "eth0", rate_bit, self.queue_ms, self.burst_ms)
        shape(self.bridge_ns, port, rate_bit, self.queue_ms, self.burst_ms)
        return Host(role=role, netns=ns, ip=ip, rate_bit=rate_bit, port=port)

    def _save(self) -> None:
        state = {
            "prefix": self.prefix,
            "pid": self.owner_pid,
            "route": self._route,
            "netns": self._made_ns,
            "workdir": str(self.workdir),
            "neigh": self._neigh,
        }
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        tmp.replace(self.state_file)

    def reshape(self, queue_ms: float) -> None:
        """Every link's queue to ``queue_ms`` (``tc qdisc replace``: nothing else moves)."""
        self.queue_ms = queue_ms
        hosts = [h for h in (self.origin, self.proxy, *self.roots, *self.nodes) if h]
        for h in hosts:
            shape(h.netns, "eth0", h.rate_bit, queue_ms, self.burst_ms)
            shape(self.bridge_ns, h.port, h.rate_bit, queue_ms, self.burst_ms)

    def tx_bytes(self, host: Host) -> int:
        """Bytes the host's ``eth0`` has sent, Ethernet headers included."""
        return _link_bytes(host.netns, "eth0", "tx")

    def retransmits(self, host: Host) -> int:
        """TCP segments the host has retransmitted (``RetransSegs`` of its namespace)."""
        return tcp_retransmits(host.netns)

    def down(self) -> None:
        teardown(
            self.prefix, self._made_ns, self._route, None if self.keep_workdir else self.workdir
        )
        restore_neighbour_limits(self._neigh)
        self._neigh = {}
        self._made_ns = []
        self._route = None
        self.state_file.unlink(missing_ok=True)
        self.origin = self.proxy = None
        self.roots = []
        self.nodes = []


NEIGH_DIR = Path("/proc/sys/net/ipv4/neigh/default")


def raise_neighbour_limits(entries: int, where: Path = NEIGH_DIR) -> dict[str, int]:
    """Make room for ``entries`` ARP entries; return the limits found (to restore).

    The kernel's neighbour table is one table for every namespace, capped at
    ``gc_thresh3`` (1,024 by default): with every host of a 36-host run talking to every
    other (the BitTorrent mode) it overflowed ("neighbor table overflow!"), new
    connections' packets were dropped, and the next mode's agents timed out connecting
    to their root.
    """
    found: dict[str, int] = {}
    for name, want in (("gc_thresh2", entries), ("gc_thresh3", 2 * entries)):
        path = where / name
        try:
            current = int(path.read_text())
            if current < want:
                path.write_text(str(want))
                found[name] = current
        except (OSError, ValueError):
            continue  # not ours to change here: the run may still fit
    return found


def restore_neighbour_limits(found: dict[str, int], where: Path = NEIGH_DIR) -> None:
    for name in ("gc_thresh2", "gc_thresh3"):  # soft first: the hard limit stays above it
        if name in found:
            with contextlib.suppress(OSError):
                (where / name).write_text(str(found[name]))


def _link_bytes(netns: str, dev: str, direction: str) -> int:
    out = run(in_netns(netns, ["ip", "-j", "-s", "link", "show", "dev", dev]))
    stats = json.loads(out)[0]["stats64"][direction]
    return int(stats["bytes"])


def tcp_retransmits(netns: str) -> int:
    """``Tcp: RetransSegs`` of ``/proc/net/snmp`` read inside ``netns``."""
    return retrans_segs(run(in_netns(netns, ["cat", "/proc/net/snmp"])), netns)


def retrans_segs(snmp: str, where: str = "") -> int:
    """``RetransSegs`` out of the text of ``/proc/net/snmp`` (a header line of names and
    a line of values, both starting ``Tcp:``)."""
    tcp = [ln.split() for ln in snmp.splitlines() if ln.startswith("Tcp:")]
    if len(tcp) < 2 or "RetransSegs" not in tcp[0] or len(tcp[1]) != len(tcp[0]):
        raise BenchError(f"no Tcp RetransSegs in {where or 'the'} /proc/net/snmp")
    return int(tcp[1][tcp[0].index("RetransSegs")])


def kill_netns_processes(netns: str) -> None:
    """SIGKILL every process still inside ``netns`` (all of them this run's, by PID)."""
    try:
        out = run(["ip", "netns", "pids", netns], check=False)
    except BenchError:
        return
    for word in out.split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(word), signal.SIGKILL)


def teardown(prefix: str, namespaces: list[str], route: str | None, workdir: Path | None) -> None:
    """Remove what a run made: its processes, namespaces, black-hole route and files."""
    for ns in reversed(namespaces):
        if not ns.startswith(prefix + "-"):
            continue  # never touch a namespace that is not this run's
        kill_netns_processes(ns)
    for ns in reversed(namespaces):
        if ns.startswith(prefix + "-"):
            run(["ip", "netns", "del", ns], check=False)
    if route:
        run(["ip", "route", "del", "blackhole", route], check=False)
    if workdir is not None and workdir.name.startswith(prefix):
        shutil.rmtree(workdir, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cleanup_leftovers(state_dir: Path = STATE_DIR) -> list[str]:
    """Remove the leftovers of runs whose process is gone; return their prefixes."""
    removed: list[str] = []
    if state_dir.is_dir():
        for path in sorted(state_dir.glob(f"{NS_PREFIX}*.json")):
            try:
                state = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if _alive(int(state.get("pid", 0))):
                continue
            workdir = state.get("workdir")
            teardown(
                str(state["prefix"]),
                list(state.get("netns", [])),
                state.get("route") or None,
                Path(workdir) if workdir else None,
            )
            restore_neighbour_limits(dict(state.get("neigh") or {}))
            path.unlink(missing_ok=True)
            removed.append(str(state["prefix"]))
    # namespaces of dead runs that never wrote a state file
    for ns in list_netns():
        head = ns.split("-", 1)[0]
        if not head.startswith(NS_PREFIX) or not head[len(NS_PREFIX) :].isdigit():
            continue
        if _alive(int(head[len(NS_PREFIX) :])):
            continue
        teardown(head, [ns], None, None)
        if head not in removed:
            removed.append(head)
    return removed


def list_netns() -> list[str]:
    out = run(["ip", "netns", "list"], check=False)
    return [line.split()[0] for line in out.splitlines() if line.strip()]
