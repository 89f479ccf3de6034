"""Which registry a mirror request is meant for.

In order: containerd's ``?ns=<host>`` (sent with every request to a ``hosts.toml``
mirror); else a Host header of the form ``<a>.distributed.<b>[:port]``, the address the
admission webhook rewrote the image to, which maps back to ``<a>.<b>``; else the
configured default. The ``.distributed.`` form is undone in ``ns`` too, because
containerd names the registry it was asked for, which after the webhook's rewrite is the
distributed one.
"""

from __future__ import annotations

import re

from shoal.errors import UpstreamUnknownError

DISTRIBUTED = ".distributed."
_HOST_RE = re.compile(r"^(?:\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+)(?::[0-9]{1,5})?$")
#: containerd's name for Docker Hub and the host that actually serves it
DOCKER_HUB_ALIASES = {
    "docker.io": "registry-1.docker.io",
    "index.docker.io": "registry-1.docker.io",
}


def undistribute(host: str) -> str | None:
    """``a.distributed.b[:port]`` -> ``a.b``; ``None`` when the host is not of that form."""
    head, sep, tail = host.partition(DISTRIBUTED)
    if not sep or not head or not tail:
        return None
    tail = tail.rsplit(":", 1)[0] if ":" in tail and not tail.endswith("]") else tail
    return f"{head}.{tail}"


def distribute(host: str, port: int) -> str | None:
    """``a.b[:p]`` -> ``a.distributed.b:port``; ``None`` for hosts that cannot take the form."""
    name = host.rsplit(":", 1)[0] if ":" in host and not host.startswith("[") else host
    if name.startswith("[") or name == "localhost" or "." not in name:
        return None
    if all(part.isdigit() for part in name.split(".")):
        return None
    head, _, tail = name.partition(".")
    return f"{head}{DISTRIBUTED}{tail}:{port}"


def check_host(host: str) -> str:
    if not host or len(host) > 255 or _HOST_RE.fullmatch(host) is None:
        shown = host if len(host) <= 80 else host[:80] + "..."
        raise UpstreamUnknownError(f"not a registry host: {shown!r}")
    return host


def derive_upstream(ns: str | None, host_header: str | None, default: str) -> str:
    if ns:
        check_host(ns)
        mapped = undistribute(ns) or ns
        return DOCKER_HUB_ALIASES.get(mapped, mapped)
    if host_header:
        mapped_host = undistribute(host_header)
        if mapped_host is not None:
            check_host(mapped_host)
            return DOCKER_HUB_ALIASES.get(mapped_host, mapped_host)
    if default:
        return default
    raise UpstreamUnknownError(
        "no upstream registry for this request: send ?ns=<registry>, use a "
        "<a>.distributed.<b> host, or configure UpstreamConfig.default"
    )
