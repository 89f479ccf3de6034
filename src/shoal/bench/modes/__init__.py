"""The ways a cluster can get an image, each measured on the same hosts.

``direct`` and ``proxy`` are what teams run without shoal, ``bittorrent`` is the
well-known peer-to-peer answer, ``shoal`` is this project.
"""

from __future__ import annotations

from collections.abc import Iterable

from shoal.bench.modes.base import ModeFn
from shoal.bench.modes.direct import run_direct

MODES: dict[str, ModeFn] = {
    "direct": run_direct,
}

_TOOLS: dict[str, tuple[str, ...]] = {
    "direct": ("skopeo",),
    "proxy": ("skopeo", "docker-registry"),
    "bittorrent": ("aria2c", "opentracker", "mktorrent", "curl"),
    "shoal": ("skopeo",),
}


def required_tools(modes: Iterable[str]) -> list[str]:
    out: list[str] = []
    for mode in modes:
        out += [t for t in _TOOLS.get(mode, ()) if t not in out]
    return out
