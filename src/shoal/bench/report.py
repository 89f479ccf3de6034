"""Figures from a run: per-mode statistics, the table, the JSON and the plot.

Every ratio is to a physical limit, because "faster than X" says little on a shared
two-core machine and "within 1.1x of what the wire allows" says a lot. The node bound is
S/B: every node must receive the image through its own link. ``direct``'s own bound is
N·S/B_origin (N copies through the origin's link), the proxy's N·S/B (N copies through
one node-shaped link). tc counts Ethernet headers, so TCP carries about 95.6 % of the
nominal rate; each bound is given both ways.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from shoal.bench.runner import BenchResult, ModeResult
from shoal.bench.shaping import TCP_GOODPUT
from shoal.cache import choose_piece_size
from shoal.cache.chunks import CHUNK

MIB = 1 << 20


def quantile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return math.nan
    xs = sorted(values)
    pos = (len(xs) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


@dataclass(frozen=True, slots=True)
class ModeStats:
    mode: str
    queue_ms: float
    ok: int
    total: int
    p50: float
    p95: float
    max: float
    origin_tx_bytes: int
    origin_blob_bytes: int
    origin_copies: float  # origin egress / one copy of the image
    node_bound_s: float  # S/B, nominal
    mode_bound_s: float  # the mode's own limit, nominal
    cut_vs_direct: float | None  # 1 - p95 / p95(direct)
    cpu_mean: float
    cpu_saturated: bool
    skipped: str | None

    @property
    def p95_over_node_bound(self) -> float:
        return self.p95 / self.node_bound_s

    @property
    def p95_over_mode_bound(self) -> float:
        return self.p95 / self.mode_bound_s


def node_bound(result: BenchResult) -> float:
    return result.image_bytes * 8 / result.options.rate_bit


def mode_bound(result: BenchResult, mode: str) -> float:
    o = result.options
    s_bits = result.image_bytes * 8
    bound = node_bound(result)
    if mode == "direct":
        return max(bound, o.nodes * s_bits / o.origin_rate_bit)
    if mode == "proxy":
        return max(bound, s_bits / o.origin_rate_bit, o.nodes * s_bits / o.rate_bit)
    return max(bound, s_bits / o.origin_rate_bit)


def stats(result: BenchResult) -> list[ModeStats]:
    direct_p95: dict[float, float] = {}  # per queue depth
    out: list[ModeStats] = []
    for m in result.modes:
        times = [n.seconds for n in m.run.nodes if n.seconds is not None]
        p95 = quantile(times, 0.95)
        if m.run.mode == "direct" and len(times) == len(m.run.nodes):
            direct_p95[m.queue_ms] = p95
        out.append(
            ModeStats(
                mode=m.run.mode,
                queue_ms=m.queue_ms,
                ok=len(times),
                total=len(m.run.nodes),
                p50=quantile(times, 0.5),
                p95=p95,
                max=max(times) if times else math.nan,
                origin_tx_bytes=m.origin_tx_bytes,
                origin_blob_bytes=m.origin_blob_bytes,
                origin_copies=m.origin_tx_bytes / result.image_bytes,
                node_bound_s=node_bound(result),
                mode_bound_s=mode_bound(result, m.run.mode),
                cut_vs_direct=None,
                cpu_mean=m.run.cpu.mean,
                cpu_saturated=m.run.cpu.saturated,
                skipped=m.skipped,
            )
        )
    return [_with_cut(s, direct_p95[s.queue_ms]) if s.queue_ms in direct_p95 else s for s in out]


def _with_cut(s: ModeStats, direct_p95: float) -> ModeStats:
    from dataclasses import replace

    cut = None if math.isnan(s.p95) else 1 - s.p95 / direct_p95
    return replace(s, cut_vs_direct=cut)


def _ratio(x: float) -> str:
    if math.isnan(x):
        return "-"
    return f"{x:.2f} ({x * TCP_GOODPUT:.2f})"


def table(result: BenchResult) -> Table:
    o = result.options
    title = (
        f"shoal bench: N={o.nodes}, B={o.rate_mbit:g} Mbit/s, B_origin={o.origin_rate_mbit:g} "
        f"Mbit/s, image {result.image_bytes / MIB:.1f} MiB in {o.layers} layers; "
        f"S/B = {node_bound(result):.2f} s ({node_bound(result) / TCP_GOODPUT:.2f} s at TCP "
        "goodput)"
    )
    t = Table(title=title, title_justify="left")
    for col in (
        "mode",
        "queue ms",
        "nodes ok",
        "p50 s",
        "p95 s",
        "max s",
        "origin egress MiB (copies)",
        "p95 cut vs direct",
        "p95 / (S/B)",
        "p95 / mode bound",
        "CPU",
        "own CPU s",
    ):
        t.add_column(col, justify="left" if col == "mode" else "right")
    for s, m in zip(stats(result), result.modes, strict=True):
        cut = "-" if s.cut_vs_direct is None else f"{s.cut_vs_direct:.1%}"
        cpu = f"{s.cpu_mean:.0%}" + (" ⚠ busy" if s.cpu_saturated else "")
        t.add_row(
            s.mode,
            f"{s.queue_ms:g}",
            f"{s.ok}/{s.total}",
            f"{s.p50:.2f}",
            f"{s.p95:.2f}",
            f"{s.max:.2f}",
            f"{s.origin_tx_bytes / MIB:.1f} ({s.origin_copies:.2f})",
            cut,
            _ratio(s.p95_over_node_bound),
            _ratio(s.p95_over_mode_bound),
            cpu,
            f"{m.own_cpu_s:.1f}",
        )
    t.caption = (
        "ratios: nominal (at 95.6 % TCP goodput); mode bound: direct N·S/B_origin, proxy "
        "N·S/B, others max(S/B, S/B_origin); egress: the origin host's eth0 tx bytes; "
        "CPU: the whole machine's (2 cores, shared) during the pulls; ⚠ busy: saturated, the "
        "figure then measures the CPU, not the method; own CPU s: the mode's own processes "
        "(clients, cache, agents, swarm; not the origin)"
    )
    t.caption_justify = "left"
    return t


def print_report(result: BenchResult, console: Console) -> None:
    console.print(table(result))
    for m in result.modes:
        for note in m.run.notes:
            console.print(f"  [bold]{m.run.mode}[/bold]: {escape(note)}")
        for n in m.run.nodes:
            if n.error:
                console.print(f"  [red]{m.run.mode} {n.node}: {escape(n.error)}[/red]")


def to_json(result: BenchResult) -> dict[str, Any]:
    o = result.options
    return {
        "options": {
            "nodes": o.nodes,
            "roots": o.roots,
            "rate_mbit": o.rate_mbit,
            "origin_rate_mbit": o.origin_rate_mbit,
            "layers": o.layers,
            "layer_mib": o.layer_mib,
            "piece_kib": o.piece_kib,
            # what the roots cut each layer into (the automatic size changes with shoal)
            "piece_bytes": choose_piece_size(
                result.layer_bytes // max(o.layers, 1), o.piece_kib * 1024
            ),
            "stripes": o.stripes,
            # agents pass pieces on this many bytes at a time (``cache/chunks.py``)
            "chunk_bytes": CHUNK,
            "modes": list(o.modes),
            "queue_ms": list(o.queue_ms),
            "burst_ms": o.burst_ms,
            "by_address": o.by_address,
            "exporter": o.exporter,
            "capacity_gib": o.capacity_gib,
        },
        "image_bytes": result.image_bytes,
        "layer_bytes": result.layer_bytes,
        "tcp_goodput": TCP_GOODPUT,
        "node_bound_s": node_bound(result),
        "modes": [_mode_json(m, s) for m, s in zip(result.modes, stats(result), strict=True)],
    }


def _mode_json(m: ModeResult, s: ModeStats) -> dict[str, Any]:
    def num(x: float) -> float | None:
        return None if math.isnan(x) else round(x, 4)

    return {
        "mode": s.mode,
        "queue_ms": s.queue_ms,
        "ok": s.ok,
        "total": s.total,
        "p50_s": num(s.p50),
        "p95_s": num(s.p95),
        "max_s": num(s.max),
        "origin_tx_bytes": s.origin_tx_bytes,
        "origin_blob_bytes": s.origin_blob_bytes,
        "origin_copies": round(s.origin_copies, 4),
        "p95_cut_vs_direct": s.cut_vs_direct,
        "mode_bound_s": s.mode_bound_s,
        "p95_over_node_bound": num(s.p95_over_node_bound),
        "p95_over_node_bound_goodput": num(s.p95_over_node_bound * TCP_GOODPUT),
        "p95_over_mode_bound": num(s.p95_over_mode_bound),
        "p95_over_mode_bound_goodput": num(s.p95_over_mode_bound * TCP_GOODPUT),
        "cpu_mean": round(s.cpu_mean, 4),
        "cpu_busy_share": round(m.run.cpu.busy_share, 4),
        "cpu_saturated": s.cpu_saturated,
        "wall_s": round(m.wall_s, 3),
        "own_cpu_s": round(m.own_cpu_s, 3),
        "skipped": s.skipped,
        "notes": m.run.notes,
        "extra": m.run.extra,
        "nodes": [
            {"node": n.node, "seconds": n.seconds, "error": n.error, "blob_hosts": n.blob_hosts}
            for n in m.run.nodes
        ],
    }


def write_json(result: BenchResult, path: Path) -> None:
    path.write_text(json.dumps(to_json(result), indent=2) + "\n")


def plot(result: BenchResult, path: Path) -> None:
    """Completion-time CDF per mode, and origin egress per mode, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4), gridspec_kw={"width_ratios": [3, 2]})
    bound = node_bound(result)
    names = [_label(result, m) for m in result.modes]
    for m, name in zip(result.modes, names, strict=True):
        times = sorted(n.seconds for n in m.run.nodes if n.seconds is not None)
        if not times:
            continue
        ys = [(i + 1) / len(m.run.nodes) for i in range(len(times))]
        ax1.step([0.0, *times], [0.0, *ys], where="post", label=name)
    ax1.axvline(bound, color="grey", linestyle="--", linewidth=1, label="S/B")
    ax1.axvline(
        bound / TCP_GOODPUT, color="grey", linestyle=":", linewidth=1, label="S/B at TCP goodput"
    )
    ax1.set_xlabel("completion time (s)")
    ax1.set_ylabel("share of nodes done")
    ax1.set_ylim(0, 1.02)
    ax1.set_xlim(left=0)
    ax1.legend(loc="center", fontsize=8)
    o = result.options
    ax1.set_title(
        f"N={o.nodes}, B={o.rate_mbit:g} Mbit/s, {result.image_bytes / MIB:.0f} MiB", fontsize=10
    )
    egress = [m.origin_tx_bytes / MIB for m in result.modes]
    ax2.bar(names, egress, color=[f"C{i}" for i in range(len(names))])
    ax2.axhline(
        result.image_bytes / MIB, color="grey", linestyle="--", linewidth=1, label="one copy"
    )
    ax2.set_ylabel("bytes that left the origin host (MiB)")
    ax2.legend(fontsize=8)
    ax2.set_title("origin egress", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _label(result: BenchResult, m: ModeResult) -> str:
    """The mode, and its queue depth when the run had several."""
    if len(result.options.queue_ms) > 1:
        return f"{m.run.mode} {m.queue_ms:g}ms"
    return m.run.mode


def markdown(doc: dict[str, Any]) -> str:
    """The table as GitHub markdown, from the JSON document (so old runs can be rendered)."""
    o = doc["options"]
    bound = doc["node_bound_s"]
    lines = [
        f"N={o['nodes']}, B={o['rate_mbit']:g} Mbit/s, B_origin={o['origin_rate_mbit']:g} "
        f"Mbit/s, image {doc['image_bytes'] / MIB:.1f} MiB in {o['layers']} layers, "
        f"S/B = {bound:.2f} s ({bound / doc['tcp_goodput']:.2f} s at TCP goodput)",
        "",
        "| mode | queue ms | ok | p50 s | p95 s | max s | origin egress MiB (copies) "
        "| p95 cut vs direct | p95/(S/B) | p95/mode bound | CPU (machine) | own CPU s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def f(x: float | None, fmt: str) -> str:
        return "-" if x is None else format(x, fmt)

    def pair(m: dict[str, Any], key: str) -> str:
        return f"{f(m[key], '.2f')} ({f(m[key + '_goodput'], '.2f')})"

    for m in doc["modes"]:
        cut = m["p95_cut_vs_direct"]
        busy = " ⚠ busy" if m["cpu_saturated"] else ""
        lines.append(
            f"| {m['mode']} | {f(m.get('queue_ms'), 'g')} | {m['ok']}/{m['total']} "
            f"| {f(m['p50_s'], '.2f')} "
            f"| {f(m['p95_s'], '.2f')} | {f(m['max_s'], '.2f')} "
            f"| {m['origin_tx_bytes'] / MIB:.1f} ({m['origin_copies']:.2f}) "
            f"| {f(cut, '.1%')} "
            f"| {pair(m, 'p95_over_node_bound')} | {pair(m, 'p95_over_mode_bound')} "
            f"| {m['cpu_mean']:.0%}{busy} | {m.get('own_cpu_s', 0):.1f} |"
        )
    return "\n".join(lines) + "\n"
