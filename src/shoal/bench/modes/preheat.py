"""``preheat``: the shoal mode's hosts, a preheat job to every node, then the rollout.

Three things timed in one run, side by side:

1. **The preheat**: ``shoal preheat IMAGE --wait --json`` on a root host, for every
   agent; each node's time runs from the job's creation at the root to that node done
   (the root's clock), so the table's per-node figures and its ``S/B`` ratio are the
   preheat's. The agents' own preheat cap is off (``rateLimitMB: 0``) so the figure is
   the method's, not the cap's. The origin's bytes for the mode are the preheat's: one
   copy is the goal.
2. **The rollout**: every node's skopeo pulls at once through its own agent, now warm
   (``extra.pull_p95_s``).
3. **One node alone** pulling from its own warm store, three times
   (``extra.warm_single_s``, the median): what ``pull_p95_s`` is compared with; and
   the machine's CPU seconds of that one pull, which times the node count over the
   cores is the least the rollout can take here (``extra.rollout_cpu_floor_s``): on
   one machine every node's copy shares the same cores, on real hosts it does not.

The mode's CPU column is the preheat's (job created to done), not the rollout's.
"""

from __future__ import annotations

import asyncio
import copy
import secrets
import statistics
import sys
import time
from pathlib import Path

import msgspec
import yaml

from shoal.bench.cpu import CpuMeter
from shoal.bench.errors import BenchError
from shoal.bench.modes.base import BenchContext, ModeRun, NodeResult, mirror_share, run_skopeo
from shoal.bench.modes.shoal import (
    AGENT_PORT,
    _spawn,
    _stop_all,
    _wait_up,
    node_config,
    start_agents,
)
from shoal.bench.netns import Host
from shoal.bench.proc import in_netns
from shoal.control.preheat import JobState
from shoal.lab.certs import ControlCerts, make_control_certs

#: single warm pulls timed (the median is the yardstick)
SINGLE_RUNS = 3


def _config(
    ctx: BenchContext,
    host: Host,
    mode: str,
    roots: list[str],
    cache: Path,
    secret: str,
    certs: ControlCerts,
    operator: str,
) -> str:
    doc = yaml.safe_load(node_config(ctx, host, mode, roots, cache, secret, certs))
    doc["PreheatConfig"] = {"secret": operator} if mode == "root" else {"rateLimitMB": 0}
    return yaml.safe_dump(doc, sort_keys=False)


async def run_preheat(ctx: BenchContext) -> ModeRun:
    if not ctx.cluster.roots:
        raise BenchError("the preheat mode needs a root (--roots 1 or more)")
    base = ctx.mode_dir("preheat")
    logs = base / "logs"
    logs.mkdir(exist_ok=True)
    procs: list[asyncio.subprocess.Process] = []
    secret, operator = secrets.token_hex(16), secrets.token_hex(16)
    certs = make_control_certs(base / "control-tls", [h.ip for h in ctx.cluster.roots])
    (base / "operator").write_text(operator)
    notes: list[str] = []
    extra: dict[str, float | int | str] = {}
    try:
        roots = []
        for host in ctx.cluster.roots:
            cfg = base / host.role / "root.yml"
            cfg.parent.mkdir(exist_ok=True)
            cache = base / host.role / "cache"
            cfg.write_text(_config(ctx, host, "root", [], cache, secret, certs, operator))
            proc = await _spawn(host.netns, cfg, logs / f"{host.role}.log")
            procs.append(proc)
            url = f"https://{host.ip}:{AGENT_PORT}/healthz"
            await _wait_up(host.netns, url, proc, logs / f"{host.role}.log", str(certs.ca_file))
            roots.append(f"{host.ip}:{AGENT_PORT}")
        await start_agents(
            ctx,
            base,
            procs,
            lambda node, cache: _config(ctx, node, "agent", roots, cache, secret, certs, operator),
        )
        await asyncio.sleep(5.0)  # every agent has beaten at the root (the job is for all)
        meter = CpuMeter()
        meter.start()
        try:
            state, wall = await _preheat(ctx, roots, certs, base)
        finally:
            cpu = await meter.stop()
        created = state.created
        by_ip = {n.peer.rpartition(":")[0]: n for n in state.nodes}
        nodes: list[NodeResult] = []
        for node in ctx.nodes:
            got = by_ip.get(node.ip)
            if got is None or got.state != "done":
                why = "not in the job" if got is None else f"{got.state}: {got.reason}"
                nodes.append(NodeResult(node.role, None, why))
            else:
                nodes.append(NodeResult(node.role, got.finished - created))
        handed = [n.started - created for n in state.nodes]
        extra |= {
            "preheat_state": state.state,
            "preheat_cli_s": round(wall, 3),
            "preheat_handout_max_s": round(max(handed, default=0.0), 3),
        }
        pulls, rollout_cpu = await run_skopeo(
            ctx, "preheat-rollout", lambda node: f"127.0.0.1:{AGENT_PORT}"
        )
        done = sorted(n.seconds for n in pulls if n.seconds is not None)
        via = mirror_share(pulls, lambda node: f"127.0.0.1:{AGENT_PORT}")
        singles: list[tuple[float, float]] = []  # (seconds, the machine's CPU seconds)
        one = copy.copy(ctx)
        one.cluster = copy.copy(ctx.cluster)
        one.cluster.nodes = ctx.cluster.nodes[:1]
        for i in range(SINGLE_RUNS):
            res, used = await run_skopeo(
                one, f"preheat-single{i}", lambda node: f"127.0.0.1:{AGENT_PORT}"
            )
            if res[0].seconds is not None:
                singles.append((res[0].seconds, used.busy_s))
        if len(done) == len(pulls) and singles:
            p95 = done[min(len(done) - 1, max(0, round(0.95 * len(done)) - 1))]
            single = statistics.median(s for s, _ in singles)
            single_cpu = statistics.median(c for _, c in singles)
            # every pull's CPU on this machine's cores: the rollout cannot beat it here
            floor = len(pulls) * single_cpu / rollout_cpu.cores
            extra |= {
                "pull_p95_s": round(p95, 3),
                "warm_single_s": round(single, 3),
                "warm_single_cpu_s": round(single_cpu, 3),
                "pull_p95_over_single": round(p95 / single, 3),
                "rollout_cpu_floor_s": round(floor, 3),
                "pull_p95_over_floor": round(p95 / floor, 3) if floor > 0 else 0.0,
                "rollout_cpu_busy_share": round(rollout_cpu.busy_share, 3),
            }
            notes.append(
                f"rollout after the preheat: {len(done)} pulls at once, p95 {p95:.2f} s; one node "
                f"alone from its warm store {single:.2f} s (median of {len(singles)}): "
                f"{p95 / single:.2f}x; CPU busy {rollout_cpu.busy_share:.0%} during the rollout"
            )
            notes.append(
                f"one warm pull takes {single_cpu:.2f} CPU s of this machine (skopeo, agent, "
                f"kernel), so {len(pulls)} need {floor:.2f} s of its {rollout_cpu.cores} cores "
                f"at least: the rollout's p95 is {p95 / floor:.2f}x that floor"
            )
        else:
            failed = [n for n in pulls if n.seconds is None]
            notes.append(f"rollout: {len(failed)} pull(s) failed; singles {singles}")
        extra["rollout_via_mirror"] = round(via, 3)
    finally:
        await _stop_all(procs)
    notes.insert(
        0,
        f"per node: job created at the root to that node done (root's clock); the CLI took "
        f"{extra.get('preheat_cli_s', '?')} s end to end; the last node was handed its work "
        f"{extra.get('preheat_handout_max_s', '?')} s after the job began (agents learn of "
        "it on their 2 s heartbeat); agents' rateLimitMB 0",
    )
    return ModeRun("preheat", nodes, cpu, notes=notes, extra=extra)


async def _preheat(
    ctx: BenchContext, roots: list[str], certs: ControlCerts, base: Path
) -> tuple[JobState, float]:
    """``shoal preheat --wait --json`` on the first root host: the final state, seconds."""
    host = ctx.cluster.roots[0]
    argv = [
        sys.executable, "-m", "shoal", "preheat", ctx.workload.reference, "--wait", "--json",
        "--quiet", "--root", roots[0], "--ca-file", str(certs.ca_file),
        "--secret-file", str(base / "operator"), "--timeout", str(ctx.timeout_s),
    ]  # fmt: skip
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        *in_netns(host.netns, argv),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
    )
    out, err = await proc.communicate()
    wall = time.monotonic() - started
    if proc.returncode != 0 and not out:
        raise BenchError(f"shoal preheat: {err.decode(errors='replace').strip()[-300:]}")
    try:
        return msgspec.json.decode(out, type=JobState), wall
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise BenchError(f"shoal preheat printed no job state: {out[:200]!r}") from exc
