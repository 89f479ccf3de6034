"""Turn per-node, per-layer finish times into the figures ``shoal sim`` prints.

Decompression (``unpack_bps`` > 0) is added after the download, as containerd does it:
layers are unpacked one at a time in manifest order, each as soon as it has been
downloaded and the previous one is unpacked, on one core at the measured rate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field


@dataclass(slots=True)
class Outcome:
    """What a run measured."""

    layer_done: list[list[float]]  #: per agent, per layer: download finished (s); inf if not
    dead: list[bool]
    origin_bytes: float
    origin_peak_bps: float
    root_upload_bytes: float
    peer_bytes: float
    sim_end: float
    events: int
    flows: int
    pieces: int = 0
    streamed: int = 0  #: piece transfers started before their sender held the piece
    notes: list[str] = field(default_factory=list)


def unpacked(layer_done: Sequence[float], sizes: Sequence[int], unpack_bps: float) -> float:
    """When the last layer is unpacked (or downloaded, without a rate)."""
    if unpack_bps <= 0:
        return max(layer_done) if layer_done else 0.0
    t = 0.0
    for done, size in zip(layer_done, sizes, strict=True):
        t = max(t, done) + size / unpack_bps
    return t


def quantile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank quantile of already sorted values."""
    if not sorted_values:
        return math.nan
    k = max(0, min(len(sorted_values) - 1, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[k]


@dataclass(frozen=True, slots=True)
class PullStats:
    """Completion figures of one way of pulling, over the nodes that lived."""

    nodes: int  #: nodes that finished
    unfinished: int  #: nodes alive at the end that had not finished
    p50: float  #: seconds
    p95: float
    max: float
    origin_bytes: float  #: bytes served by the origin
    origin_peak_bps: float  #: the origin's peak egress, bytes/s
    times: tuple[float, ...]  #: every finished node's time, sorted

    def as_dict(self) -> dict[str, object]:
        d = asdict(self)
        d.pop("times")
        return d


def stats(
    layer_done: Sequence[Sequence[float]],
    dead: Sequence[bool],
    sizes: Sequence[int],
    unpack_bps: float,
    origin_bytes: float,
    origin_peak_bps: float,
) -> PullStats:
    times: list[float] = []
    unfinished = 0
    for per_layer, gone in zip(layer_done, dead, strict=True):
        if gone:
            continue
        if any(math.isinf(t) for t in per_layer):
            unfinished += 1
            continue
        times.append(unpacked(per_layer, sizes, unpack_bps))
    times.sort()
    return PullStats(
        nodes=len(times),
        unfinished=unfinished,
        p50=quantile(times, 0.50),
        p95=quantile(times, 0.95),
        max=times[-1] if times else math.nan,
        origin_bytes=origin_bytes,
        origin_peak_bps=origin_peak_bps,
        times=tuple(times),
    )


def plot(path: str, title: str, series: dict[str, Sequence[float]], bound: float) -> None:
    """CDF of completion times per way of pulling, with the physical bound marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, times in series.items():
        if times:
            ys = [(k + 1) / len(times) for k in range(len(times))]
            ax.step(list(times), ys, where="post", label=name)
    ax.axvline(bound, color="grey", linestyle="--", label=f"physical bound {bound:.1f} s")
    ax.set_xscale("log")
    ax.set_xlabel("pull finished (s, log scale)")
    ax.set_ylabel("fraction of nodes")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
