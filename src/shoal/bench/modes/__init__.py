"""The ways a cluster can get an image, each measured on the same hosts.

``direct`` and ``proxy`` are what teams run without shoal, ``bittorrent`` is the
well-known peer-to-peer answer, ``shoal`` is this project; ``preheat`` is shoal with a
preheat job before the pulls (not in the default set).
"""

from __future__ import annotations

from collections.abc import Iterable

from shoal.bench.modes.base import ModeFn
from shoal.bench.modes.bittorrent import run_bittorrent
from shoal.bench.modes.direct import run_direct
from shoal.bench.modes.preheat import run_preheat
from shoal.bench.modes.proxy import run_proxy
from shoal.bench.modes.shoal import run_shoal

MODES: dict[str, ModeFn] = {
    "direct": run_direct,
    "proxy": run_proxy,
    "bittorrent": run_bittorrent,
    "shoal": run_shoal,
    "preheat": run_preheat,
}

_TOOLS: dict[str, tuple[str, ...]] = {
    "direct": ("skopeo",),
    "proxy": ("skopeo", "docker-registry"),
    "bittorrent": ("aria2c", "opentracker", "mktorrent", "curl"),
    "shoal": ("skopeo",),
    "preheat": ("skopeo",),
}


def required_tools(modes: Iterable[str]) -> list[str]:
    out: list[str] = []
    for mode in modes:
        out += [t for t in _TOOLS.get(mode, ()) if t not in out]
    return out
