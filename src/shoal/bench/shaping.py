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


#: tbf's ``latency``: the link's queue, in ms of traffic. A switch port holds a few ms;
#: 50 ms is a deep buffer, and results depend on it (docs/bench.md)
QUEUE_MS = 20.0
#: the bucket: ms of traffic that may leave back to back
BURST_MS = 4.0


def burst_bytes(rate_bit: int, burst_ms: float = BURST_MS) -> int:
    """Bucket depth: ``burst_ms`` of traffic, never below 32 KiB (one GSO segment fits)."""
    return max(int(rate_bit / 8 * burst_ms / 1000), 32 * 1024)


def tbf_argv(
    dev: str, rate_bit: int, latency_ms: float = QUEUE_MS, burst_ms: float = BURST_MS
) -> list[str]:
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
        str(burst_bytes(rate_bit, burst_ms)),
        "latency",
        f"{latency_ms:g}ms",
    ]


def shape(
    netns: str, dev: str, rate_bit: int, latency_ms: float = QUEUE_MS, burst_ms: float = BURST_MS
) -> None:
    """Cap the egress of ``dev`` in ``netns``."""
    run(in_netns(netns, tbf_argv(dev, rate_bit, latency_ms, burst_ms)))


def shaped_rate(netns: str, dev: str) -> int | None:
    """The tbf rate (bits/s) on ``dev``, from ``tc``'s own answer; None if unshaped."""
    out = run(in_netns(netns, ["tc", "-j", "qdisc", "show", "dev", dev]))
    for q in json.loads(out or "[]"):
        if q.get("kind") == "tbf":
            rate = q.get("options", {}).get("rate")
            if isinstance(rate, int):
                return rate * 8
    return None
