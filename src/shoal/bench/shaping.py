"""Link shaping with ``tc``: a token bucket on each end of a host's veth.

netem, fq and police do not exist on this kind of machine; tbf does and is accurate to a
few per cent. A host's upload is shaped on its own ``eth0`` (egress), its download on the
bridge-side end of the same veth (egress towards the host), so one rate B holds in both
directions without an ifb. tc counts Ethernet headers: a TCP stream gets about 95.6 % of
the nominal rate (1448 payload bytes per 1514-byte frame).
"""

from __future__ import annotations

import json

from shoal.bench.proc import in_netns, run

#: TCP payload per Ethernet frame on a 1500-byte MTU with timestamps: 1448 / 1514
TCP_GOODPUT = 1448 / 1514


def burst_bytes(rate_bit: int) -> int:
    """Bucket depth: 10 ms of traffic, never below 32 KiB so one GSO segment fits easily."""
    return max(rate_bit // 8 // 100, 32 * 1024)


def tbf_argv(dev: str, rate_bit: int, latency_ms: int = 50) -> list[str]:
    """The ``tc`` command that caps ``dev``'s egress at ``rate_bit`` bits/s."""
    return [
        "tc",
        "qdisc",
        "replace",
        "dev",
        dev,
        "root",
        "tbf",
        "rate",
        f"{rate_bit}bit",
        "burst",
        str(burst_bytes(rate_bit)),
        "latency",
        f"{latency_ms}ms",
    ]


def shape(netns: str, dev: str, rate_bit: int) -> None:
    """Cap the egress of ``dev`` in ``netns``."""
    run(in_netns(netns, tbf_argv(dev, rate_bit)))


def shaped_rate(netns: str, dev: str) -> int | None:
    """The tbf rate (bits/s) on ``dev``, from ``tc``'s own answer; None if unshaped."""
    out = run(in_netns(netns, ["tc", "-j", "qdisc", "show", "dev", dev]))
    for q in json.loads(out or "[]"):
        if q.get("kind") == "tbf":
            rate = q.get("options", {}).get("rate")
            if isinstance(rate, int):
                return rate * 8
    return None
