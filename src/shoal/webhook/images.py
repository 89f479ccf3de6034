"""Image references and the ``.distributed.`` endpoint form, without IO.

The rewrite keeps the reference system's address form: the registry ``<a>.<b>`` becomes
``<a>.distributed.<b>:<port>`` and the rest of the reference (repository, tag, digest)
is kept byte for byte, so a digest-pinned image stays pinned to the same content.

Names are normalised the way containerd and the Docker CLI do it (the
``distribution/reference`` rules), so the registry the webhook sees is the one the
runtime would contact and the one containerd sends as ``?ns=``:

- a first path component with no ``.`` or ``:`` and not ``localhost`` is a Docker Hub
  repository: ``nginx`` is ``docker.io/library/nginx`` and ``bitnami/redis`` is
  ``docker.io/bitnami/redis``; ``index.docker.io`` is the legacy name of ``docker.io``.
- so Docker Hub images become ``docker.distributed.io:<port>/library/nginx``; the agent
  maps that back to ``docker.io`` and, like containerd, talks to Docker Hub's API host
  for it. ``registry-1.docker.io`` written out in a reference is just another host.

Hosts that cannot take the form are left alone: IP literals, ``localhost`` and other
single-label names, and hosts with a port of their own (the form has room for one port
only, the agent's).
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

DOCKER_HUB = "docker.io"
LEGACY_DOCKER_HUB = "index.docker.io"
DISTRIBUTED = "distributed"

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_PATH_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_TAG_RE = re.compile(r"^[\w][\w.-]{0,127}$")
_DIGEST_RE = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]{32,}$")
_LABEL_RE = re.compile(r"^[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?$")
_DOMAIN_RE = re.compile(
    r"^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
    r"(?::[0-9]+)?$|^\[[0-9a-fA-F:.]+\](?::[0-9]+)?$"
)


@dataclass(frozen=True, slots=True)
class ImageRef:
    """A parsed reference: ``host/path`` then the tag and/or digest as written."""

    host: str
    path: str
    #: ``""``, ``":tag"``, ``"@sha256:..."`` or ``":tag@sha256:..."``, exactly as written
    tail: str

    def __str__(self) -> str:
        return f"{self.host}/{self.path}{self.tail}"

    def with_host(self, host: str) -> ImageRef:
        return ImageRef(host=host, path=self.path, tail=self.tail)


def parse_image(image: str) -> ImageRef | None:
    """Parse and normalise an image reference; ``None`` when it is not a valid one."""
    if not image or image != image.strip():
        return None
    name, at, digest = image.partition("@")
    if at and not _DIGEST_RE.match(digest):
        return None
    # the tag is after the last ':' that is after the last '/'
    slash = name.rfind("/")
    colon = name.rfind(":")
    tag = ""
    if colon > slash:
        name, tag = name[:colon], name[colon + 1 :]
        if not _TAG_RE.match(tag):
            return None
    first, sep, rest = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        host, path = first, rest
        if not _DOMAIN_RE.match(host):
            return None
    else:
        host, path = DOCKER_HUB, name
    if host == LEGACY_DOCKER_HUB:
        host = DOCKER_HUB
    if host == DOCKER_HUB and "/" not in path:
        path = f"library/{path}"
    if not _PATH_RE.match(path):
        return None
    tail = (f":{tag}" if tag else "") + (f"@{digest}" if at else "")
    return ImageRef(host=host, path=path, tail=tail)


def distributed_endpoint(host: str, port: int) -> str | None:
    """``<a>.<b>`` -> ``<a>.distributed.<b>:<port>``; ``None`` for hosts that cannot."""
    if ":" in host or host.startswith("["):
        return None  # an explicit port, or an IPv6 literal
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return None
    first, dot, rest = host.partition(".")
    if not dot or not rest or not _LABEL_RE.match(first):
        return None  # localhost and other single-label names
    if is_distributed(host):
        return None
    return f"{first}.{DISTRIBUTED}.{rest}:{port}"


def is_distributed(host: str) -> bool:
    """True for a host already in the ``<a>.distributed.<b>[:port]`` form."""
    name = host.rsplit(":", 1)[0] if ":" in host and not host.startswith("[") else host
    labels = name.split(".")
    return len(labels) >= 3 and labels[1] == DISTRIBUTED


def origin_of(endpoint: str) -> str | None:
    """``<a>.distributed.<b>[:port]`` -> ``<a>.<b>``; ``None`` if not in that form."""
    if not is_distributed(endpoint):
        return None
    name = endpoint.rsplit(":", 1)[0] if ":" in endpoint else endpoint
    first, _, rest = name.partition(".")
    return f"{first}.{rest.partition('.')[2]}"


@dataclass(frozen=True, slots=True)
class HostPatterns:
    """Which registries are accelerated: exact hosts or shell-style globs, any case.

    ``*.cr.aliyuncs.com`` matches every ACR host; ``*`` accelerates every registry that
    can take the form. ``docker.io`` must be written as such (the normalised name),
    which also covers short names like ``nginx``.
    """

    patterns: tuple[str, ...]

    @classmethod
    def of(cls, patterns: Iterable[str]) -> HostPatterns:
        return cls(tuple(p.strip().lower() for p in patterns if p.strip()))

    def match(self, host: str) -> bool:
        h = host.lower()
        if h == LEGACY_DOCKER_HUB:
            h = DOCKER_HUB
        return any(fnmatch.fnmatchcase(h, p) for p in self.patterns)


@dataclass(frozen=True, slots=True)
class Rewrite:
    original: str
    rewritten: str
    #: the registry as containerd names it, e.g. ``docker.io``
    registry: str
    #: ``<a>.distributed.<b>:<port>``
    endpoint: str


def rewrite_image(image: str, patterns: HostPatterns, port: int) -> Rewrite | None:
    """The rewrite for one image, or ``None`` when it is to be left as it is."""
    ref = parse_image(image)
    if ref is None or not patterns.match(ref.host):
        return None
    endpoint = distributed_endpoint(ref.host, port)
    if endpoint is None:
        return None
    return Rewrite(
        original=image,
        rewritten=str(ref.with_host(endpoint)),
        registry=ref.host,
        endpoint=endpoint,
    )


def registry_of_auth_key(key: str) -> str | None:
    """The registry host a ``.dockerconfigjson`` ``auths`` key stands for.

    Keys come as ``host``, ``host:port``, ``https://host/v1/`` (Docker Hub's legacy
    ``https://index.docker.io/v1/``) or ``http://host``; kubelet matches them the same
    way, by host (and port when one is given).
    """
    k = key.strip()
    for scheme in ("https://", "http://"):
        if k.lower().startswith(scheme):
            k = k[len(scheme) :]
            break
    host = k.split("/", 1)[0]
    if not host or not _DOMAIN_RE.match(host):
        return None
    if host.lower() == LEGACY_DOCKER_HUB:
        return DOCKER_HUB
    return host
