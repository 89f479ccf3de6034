"""How much of a shaped link many TCP flows get, by queue depth: what shallow queues cost.

The bench's links are tbf queues on veths (``shoal.bench.netns``, the same hosts). Here
``--senders`` hosts each open ``--flows`` connections to one receiver host and send as
fast as they can for ``--seconds``; the receiver's downlink is the shared bottleneck, as
a node's downlink is when its stripe parents all send at once. Printed per queue depth:
the goodput over the link's rate, the spread between flows (min/max of per-flow bytes),
and the retransmitted segments the senders' kernels counted (``nstat``).

    sudo .venv/bin/python bench/tcp_share.py --rate 25 --senders 16 --queue-ms 5,20,50

It shapes links with tc and needs root; everything it makes is removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from shoal.bench.netns import Cluster
from shoal.bench.proc import in_netns, run
from shoal.bench.shaping import TCP_GOODPUT

RECEIVER = r"""
import socket, sys, threading, time, json
port, total, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", port)); srv.listen(1024)
counts = []
def reader(c, i):
    buf = bytearray(1 << 20); n = 0
    while True:
        k = c.recv_into(buf)
        if not k: break
        n += k
        counts[i] = n
threads = []
start = None
for i in range(total):
    c, _ = srv.accept()
    counts.append(0)
    t = threading.Thread(target=reader, args=(c, i), daemon=True); t.start(); threads.append(t)
time.sleep(1.0)  # warm-up: slow start, the queue filling
base = list(counts); t0 = time.monotonic()
time.sleep(seconds)
got = [c - b for c, b in zip(counts, base)]
print(json.dumps({"bytes": got, "seconds": time.monotonic() - t0}), flush=True)
"""

SENDER = r"""
import socket, sys, time
host, port, flows, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
cc = sys.argv[5] if len(sys.argv) > 5 else ""
pace = int(sys.argv[6]) if len(sys.argv) > 6 else 0  # bytes/s per flow, 0: none
SO_MAX_PACING_RATE = 47
socks = []
for _ in range(flows):
    s = socket.socket()
    if cc:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, cc.encode())
    if pace:
        s.setsockopt(socket.SOL_SOCKET, SO_MAX_PACING_RATE, pace)
    s.connect((host, port))
    socks.append(s)
for s in socks: s.setblocking(False)
data = b"x" * (1 << 16)
end = time.monotonic() + seconds + 2.0
import selectors
sel = selectors.DefaultSelector()
for s in socks: sel.register(s, selectors.EVENT_WRITE)
while time.monotonic() < end:
    for key, _ in sel.select(0.1):
        try:
            key.fileobj.send(data)
        except BlockingIOError:
            pass
        except OSError:  # the receiver is done
            sys.exit(0)
"""


def retrans(netns: str) -> int:
    out = run(in_netns(netns, ["nstat", "-az", "TcpRetransSegs"]), check=False)
    for line in out.splitlines():
        if line.startswith("TcpRetransSegs"):
            return int(line.split()[1])
    return 0


def measure(
    c: Cluster,
    senders: int,
    flows: int,
    seconds: float,
    rate_bit: int,
    cc: str = "",
    pace: float = 0.0,
) -> dict[str, float]:
    rx = c.nodes[0]
    tx = c.nodes[1 : 1 + senders]
    port = 5999
    with tempfile.TemporaryDirectory() as d:
        rpath, spath = Path(d) / "r.py", Path(d) / "s.py"
        rpath.write_text(RECEIVER)
        spath.write_text(SENDER)
        before = sum(retrans(h.netns) for h in tx)
        recv = subprocess.Popen(
            in_netns(rx.netns, [sys.executable, str(rpath), str(port), str(senders * flows),
                                str(seconds)]),
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        time.sleep(0.3)
        sends = [
            subprocess.Popen(
                in_netns(
                    h.netns,
                    [
                        *(sys.executable, str(spath), rx.ip, str(port), str(flows)),
                        *(str(seconds), cc, str(int(pace * rate_bit / 8 / (senders * flows)))),
                    ],
                ),
            )
            for h in tx
        ]
        out, _ = recv.communicate(timeout=seconds + 30)
        for p in sends:
            p.wait(timeout=30)
        after = sum(retrans(h.netns) for h in tx)
    doc = json.loads(out)
    got = doc["bytes"]
    goodput = sum(got) * 8 / doc["seconds"]
    return {
        "goodput_share": goodput / (rate_bit * TCP_GOODPUT),
        "min_over_max": min(got) / max(got) if max(got) else 0.0,
        "retrans_segs": float(after - before),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", type=float, default=25.0, help="every link, Mbit/s")
    p.add_argument("--senders", type=int, default=16, help="hosts sending to one receiver")
    p.add_argument("--flows", default="1", help="connections per sender, e.g. 1,4")
    p.add_argument("--queue-ms", default="5,20,50", help="tbf queue depths, ms")
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument(
        "--cc", default="", help="the senders' congestion control (default: the kernel's)"
    )
    p.add_argument(
        "--pace",
        type=float,
        default=0.0,
        help="pace each flow at this many times its fair share of the link (0: no pacing)",
    )
    args = p.parse_args()
    if os.geteuid() != 0:
        print("tcp_share: needs root (namespaces, tc)", file=sys.stderr)
        return 2
    rate_bit = int(args.rate * 1e6)
    depths = [float(x) for x in args.queue_ms.split(",")]
    c = Cluster(args.senders + 1, 0, rate_bit, rate_bit, Path(tempfile.mkdtemp()))
    try:
        c.up()
        cc = args.cc or run(["sysctl", "-n", "net.ipv4.tcp_congestion_control"]).strip()
        print(
            f"{args.senders} senders -> 1 receiver, links {args.rate:g} Mbit/s, "
            f"{args.seconds:g} s each, congestion control {cc}"
        )
        print(f"{'queue ms':>9}{'flows':>7}{'goodput/link':>14}{'min/max flow':>14}{'retrans':>9}")
        for depth in depths:
            c.reshape(depth)
            for flows in (int(x) for x in args.flows.split(",")):
                r = measure(c, args.senders, flows, args.seconds, rate_bit, args.cc, args.pace)
                print(f"{depth:9g}{args.senders * flows:7d}{r['goodput_share']:14.3f}"
                      f"{r['min_over_max']:14.3f}{r['retrans_segs']:9.0f}", flush=True)  # fmt: skip
    finally:
        c.down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
