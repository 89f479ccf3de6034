"""``python -m tests.cluster``: the chart cluster by hand, with a report (as root).

    .venv/bin/python -m tests.cluster                        # defaults, 4 nodes, faults
    .venv/bin/python -m tests.cluster -f tests/cluster/values-cluster.yaml --nodes 6
    .venv/bin/python -m tests.cluster --old-roots-port        # the negative control
    .venv/bin/python -m tests.cluster --repeat 3 --no-main    # fault timings, 3 times

Prints what each step found; exits non-zero when a check failed.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
from pathlib import Path

from tests.cluster.cluster import ChartCluster
from tests.cluster.network import cleanup_leftovers
from tests.cluster.scenario import (
    Timed,
    check_pulls,
    pull_everywhere,
    pull_with_hung_agent,
    pull_without_agent,
)
from tests.cluster.test_chart_cluster import old_roots_port


def footprint(c: ChartCluster) -> str:
    """The largest peak RSS of each rendered container, by Pod kind."""
    pods = {"agent": [n.agent for n in c.nodes if n.agent], "root": c.roots}
    if c.webhook is not None:
        pods["webhook"] = [c.webhook]
    out = []
    for kind, group in pods.items():
        peaks = [ctr.peak_rss() for pod in group for ctr in pod.containers]
        if peaks:
            out.append(f"{kind} max {max(peaks) / 2**20:.0f} (of {len(peaks)})")
    return ", ".join(out)


def timing(t: Timed) -> str:
    return f"direct {t.direct:.2f} s, this way {t.faulty:.2f} s, added {t.added:+.2f} s"


async def run(args: argparse.Namespace, workdir: Path) -> int:
    failed = 0
    hold = [args.nodes - 1] if args.faults else []
    cluster = ChartCluster(
        workdir,
        nodes=args.nodes,
        values=[Path(v) for v in args.values],
        sets=args.set,
        release=args.release,
        namespace=args.namespace,
        patch=old_roots_port if args.old_roots_port else None,
        agents_ready=not args.old_roots_port,
        hold=hold,
    )
    async with cluster as c:
        print(f"up: {c!r}; seconds since start: {c.timings}")
        if hold:
            early = await pull_without_agent(c, c.nodes[hold[0]], seed=900, kill=False)
            print(f"{early.what}: ok={early.ok} {timing(early)}")
            failed += not early.ok
            await c.start_agent(c.nodes[hold[0]])
        if not args.no_main:
            story = await pull_everywhere(c, "v1", seed=100, layer_mib=args.layer_mib)
            findings = await check_pulls(c, story)
            for p in story.pulls:
                print(f"  {p.node} {p.image}: {'ok' if p.ok else 'FAILED'} in {p.seconds:.2f} s")
            print(f"origin: {story.facts}")
            print(
                "checks: " + ("all passed" if not findings else "\n  ".join(["FAILED:", *findings]))
            )
            failed += bool(findings) != args.old_roots_port
            print("peak RSS (VmHWM), MiB: " + footprint(c))
        if args.faults and not args.old_roots_port:
            killed, hung = [], []
            for i in range(args.repeat):
                k = await pull_without_agent(c, c.nodes[0], seed=1000 + 10 * i, kill=True)
                print(f"{k.what}: ok={k.ok} {timing(k)}")
                killed.append(k.added)
                agent = c.nodes[0].agent
                assert agent is not None
                await agent.containers[0].start()
                agent.watch(agent.containers[0])
                await c.wait_agents([agent])
                h = await pull_with_hung_agent(c, c.nodes[1], seed=2000 + 10 * i)
                print(f"{h.what}: ok={h.ok} {timing(h)}")
                for line in h.events:
                    print(f"    {line}")
                hung.append(h.faulty)
                failed += not (k.ok and h.ok)
                hung_agent = c.nodes[1].agent
                assert hung_agent is not None
                await c.wait_agents([hung_agent])
            print(
                f"median of {args.repeat}: killed added {statistics.median(killed):+.2f} s, "
                f"hung pull {statistics.median(hung):.2f} s"
            )
    return 1 if failed else 0


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m tests.cluster", description=__doc__)
    p.add_argument("--nodes", type=int, default=4)
    p.add_argument("-f", "--values", action="append", default=[], metavar="FILE")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--release", default="shoal")
    p.add_argument("--namespace", default="shoal-system")
    p.add_argument("--old-roots-port", action="store_true", help="the negative control")
    p.add_argument("--no-faults", dest="faults", action="store_false")
    p.add_argument("--no-main", action="store_true", help="skip the pulls on every node")
    p.add_argument("--repeat", type=int, default=1, help="fault measurements")
    p.add_argument("--layer-mib", type=float, default=0, help="bigger images: layers of this size")
    p.add_argument("--keep", metavar="DIR", help="work directory to keep (logs, pod specs)")
    p.add_argument("--cleanup", action="store_true", help="remove crashed runs' leftovers, exit")
    args = p.parse_args()
    if args.cleanup:
        print("removed:", ", ".join(cleanup_leftovers()) or "nothing")
        return 0
    if args.keep:
        return asyncio.run(run(args, Path(args.keep)))
    with tempfile.TemporaryDirectory(prefix="shoal-cluster-") as tmp:
        return asyncio.run(run(args, Path(tmp)))


if __name__ == "__main__":
    sys.exit(main())
