"""The cluster's network: one namespace per node and per Pod, a bridge, hosts files.

Every run claims one /24 of 10.78.0.0/16 by adding a black-hole route for it in the
root namespace (the route is the lock between concurrent runs, and it keeps anything
addressed to the run from leaking to the default route once the run's link is gone).
The root namespace gets one address on the bridge, ``.1``: the harness acts as the API
server and the kubelets from there. Names resolve as cluster DNS would, through hosts
files: a namespace's ``/etc/netns/NAME/hosts`` is what ``ip netns exec`` shows its
processes as ``/etc/hosts`` (the node's file, which node-setup edits), and each Pod
gets a hosts file of its own (see ``kubelet.py``). Everything made is removed by
``down()``, also after a crash of the run (the names carry the owner's PID).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

PREFIX = "10.78"
#: the black-hole route of a run's /24 has this metric, below any kernel route's
LOCK_METRIC = 4242
NETNS_ETC = Path("/etc/netns")


class NetworkError(Exception):
    pass


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise NetworkError(f"{' '.join(argv)}: {done.stderr.strip() or done.stdout.strip()}")
    return done


@dataclass
class Host:
    """A network namespace with one address on the bridge."""

    name: str
    netns: str
    ip: str


@dataclass
class Network:
    tag: str = field(default_factory=lambda: f"shc{os.getpid()}")
    subnet: str = ""
    hosts: list[Host] = field(default_factory=list)
    _next: int = 10
    _made_netns: list[str] = field(default_factory=list)
    _made_etc: bool = False
    _route: str = ""
    _host_link: str = ""

    def __repr__(self) -> str:
        return f"<Network {self.tag} {self.subnet or 'down'} | {len(self.hosts)} hosts>"

    @property
    def bridge_ns(self) -> str:
        return f"{self.tag}-br"

    @property
    def base(self) -> str:
        return self.subnet.rsplit(".", 1)[0]

    @property
    def gateway(self) -> str:
        """The root namespace's address on the bridge (API server, probes, pushes)."""
        return f"{self.base}.1"

    def up(self) -> None:
        self._claim()
        self._netns(self.bridge_ns)
        self._in(self.bridge_ns, "ip", "link", "add", "br0", "type", "bridge")
        self._in(self.bridge_ns, "ip", "link", "set", "br0", "up")
        link = f"{self.tag}h"
        self._host_link = link
        sh(
            "ip",
            "link",
            "add",
            link,
            "type",
            "veth",
            "peer",
            "name",
            "p-host",
            "netns",
            self.bridge_ns,
        )
        self._in(self.bridge_ns, "ip", "link", "set", "p-host", "master", "br0", "up")
        sh("ip", "addr", "add", f"{self.gateway}/24", "dev", link)
        sh("ip", "link", "set", link, "up")

    def _claim(self) -> None:
        for third in range(256):
            subnet = f"{PREFIX}.{third}.0/24"
            done = sh(
                "ip", "route", "add", "blackhole", subnet, "metric", str(LOCK_METRIC), check=False
            )
            if done.returncode == 0:
                self.subnet, self._route = subnet, subnet
                return
        raise NetworkError(f"no free /24 left in {PREFIX}.0.0/16")

    def _netns(self, name: str) -> None:
        self._made_netns.append(name)
        sh("ip", "netns", "add", name)
        self._in(name, "ip", "link", "set", "lo", "up")
        with contextlib.suppress(NetworkError):
            self._in(name, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")

    def _in(self, netns: str, *argv: str) -> None:
        sh("ip", "netns", "exec", netns, *argv)

    def add(self, name: str, ip: str | None = None, *, extra_ips: int = 0) -> Host:
        """A namespace on the bridge; ``extra_ips`` more addresses on the same link."""
        if ip is None:
            ip = f"{self.base}.{self._next}"
            self._next += 1
        index = len(self.hosts)
        netns = f"{self.tag}-{name}"
        port = f"b{index}"
        self._netns(netns)
        # made inside the bridge's namespace: no name in the root namespace to clash
        self._in(
            self.bridge_ns,
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
            netns,
        )
        self._in(self.bridge_ns, "ip", "link", "set", port, "master", "br0", "up")
        self._in(netns, "ip", "addr", "add", f"{ip}/24", "dev", "eth0")
        for _ in range(extra_ips):
            more = f"{self.base}.{self._next}"
            self._next += 1
            self._in(netns, "ip", "addr", "add", f"{more}/24", "dev", "eth0")
        self._in(netns, "ip", "link", "set", "eth0", "up")
        host = Host(name, netns, ip)
        self.hosts.append(host)
        return host

    def next_ip(self) -> str:
        ip = f"{self.base}.{self._next}"
        self._next += 1
        return ip

    def write_hosts(self, host: Host, text: str) -> Path:
        """The namespace's ``/etc/hosts`` as ``ip netns exec`` shows it."""
        if not NETNS_ETC.exists():
            NETNS_ETC.mkdir(parents=True)
            self._made_etc = True
        path = NETNS_ETC / host.netns / "hosts"
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
        return path

    def down(self) -> None:
        for netns in reversed(self._made_netns):
            sh("ip", "netns", "del", netns, check=False)
            shutil.rmtree(NETNS_ETC / netns, ignore_errors=True)
        self._made_netns.clear()
        if self._host_link:
            sh("ip", "link", "del", self._host_link, check=False)
            self._host_link = ""
        if self._route:
            sh(
                "ip",
                "route",
                "del",
                "blackhole",
                self._route,
                "metric",
                str(LOCK_METRIC),
                check=False,
            )
            self._route = ""
        if self._made_etc:
            with contextlib.suppress(OSError):
                NETNS_ETC.rmdir()
            self._made_etc = False


def cleanup_leftovers() -> list[str]:
    """Remove what runs whose process is gone left behind (a crash, a SIGKILL)."""
    removed: list[str] = []
    names = sh("ip", "netns", "list", check=False).stdout.split()
    for name in names:
        if not name.startswith("shc") or "-" not in name:
            continue
        pid = name[3:].split("-", 1)[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            sh("ip", "netns", "del", name, check=False)
            shutil.rmtree(NETNS_ETC / name, ignore_errors=True)
            removed.append(name)
    for line in sh("ip", "link", "show", check=False).stdout.splitlines():
        parts = line.split(": ")
        if len(parts) > 1 and parts[1].startswith("shc") and parts[1].split("@")[0].endswith("h"):
            link = parts[1].split("@")[0]
            pid = link[3:-1]
            if pid.isdigit() and not Path(f"/proc/{pid}").exists():
                sh("ip", "link", "del", link, check=False)
                removed.append(link)
    for line in sh("ip", "route", "show", check=False).stdout.splitlines():
        if line.startswith(f"blackhole {PREFIX}.") and f"metric {LOCK_METRIC}" in line:
            subnet = line.split()[1]
            # a run's /24 with no link of a live run left on it
            routes = sh("ip", "route", "show", subnet, check=False).stdout
            if "dev " not in routes:
                sh(
                    "ip",
                    "route",
                    "del",
                    "blackhole",
                    subnet,
                    "metric",
                    str(LOCK_METRIC),
                    check=False,
                )
                removed.append(subnet)
    return removed
