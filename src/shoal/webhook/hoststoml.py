"""containerd ``hosts.toml`` files that send pulls to the node's own agent, without IO.

containerd (1.5 and later, with ``config_path`` set for the CRI registry) looks up
``<config_path>/<host[:port]>/hosts.toml`` for every registry host it pulls from. Two
modes, as Dragonfly and Spegel do it:

- **distributed** (with the webhook): for each accelerated registry ``<a>.<b>`` the
  directory ``<a>.distributed.<b>:65001`` names the local agent as its one host.
  containerd then sends ``?ns=<a>.distributed.<b>:65001`` and the agent maps it back to
  ``<a>.<b>``. ``server`` is the *real* registry, not the distributed name: when the
  agent is down containerd falls back to the origin, so a broken agent slows pulls
  down instead of failing them (the reference system has no such fallback).

  Credentials decide how the agent is named. containerd hands a pull secret's
  credentials only to the host they were issued for (the kubelet passes the secret's
  server address along; containerd issues 10540 and 10996), and the cloned
  ``acr-credential-*-p2p`` secrets are issued for ``<a>.distributed.<b>:65001``. So by
  default the host entry *is* ``http://<a>.distributed.<b>:65001`` and node-setup makes
  that name resolve to 127.0.0.1 in the node's ``/etc/hosts`` (``etchosts.py``): the
  credentials then reach the agent, which passes them to the registry. With
  ``resolve_locally=False`` the host is the agent's plain URL, which is enough for
  public images.
- **mirror** (no webhook, no image rewrite): ``<registry>/hosts.toml`` keeps ``server``
  as the registry and puts the agent before it as a mirror; containerd tries the agent
  first and the registry when the agent fails.

Files carry a first-line marker; a ``hosts.toml`` without it was written by someone
else and is never overwritten or removed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from shoal.webhook.images import DOCKER_HUB, distributed_endpoint

MARKER = "# Written by shoal node-setup: rewritten on every agent start, edits are lost."

#: containerd's own API host for Docker Hub
DOCKER_HUB_API = "registry-1.docker.io"


@dataclass(frozen=True, slots=True)
class HostsFile:
    """One ``<directory>/hosts.toml``."""

    directory: str
    text: str


def server_url(registry: str, *, plain_http: bool = False) -> str:
    host = DOCKER_HUB_API if registry == DOCKER_HUB else registry
    return f"{'http' if plain_http else 'https'}://{host}"


#: containerd 1.7+ gives up connecting to the agent after this and goes to ``server``
#: (1.6 ignores the key). It bounds a dead agent whose port drops connections (a hung
#: agent's full accept queue); an agent that accepts but never answers is the liveness
#: probe's to end (docs/install.md, "When an agent fails").
DIAL_TIMEOUT = "1s"


def _render(server: str, agent: str, comment: str) -> str:
    return (
        f"{MARKER}\n"
        f"# {comment}\n"
        f"server = {json.dumps(server)}\n"
        f"\n"
        f"[host.{json.dumps(agent)}]\n"
        f'  capabilities = ["pull", "resolve"]\n'
        f"  dial_timeout = {json.dumps(DIAL_TIMEOUT)}\n"
    )


def distributed_hosts(
    registry: str,
    agent: str,
    port: int,
    *,
    plain_http: bool = False,
    resolve_locally: bool = False,
) -> HostsFile | None:
    """The file for ``<a>.distributed.<b>:<port>``; ``None`` if the host cannot take it.

    With ``resolve_locally`` the agent is reached by the distributed name itself (which
    must resolve to the node, see ``etchosts.py``), so credentials issued for that name
    are sent to it.
    """
    endpoint = distributed_endpoint(registry, port)
    if endpoint is None:
        return None
    host = f"http://{endpoint}" if resolve_locally else agent
    comment = f"images rewritten to {endpoint} go to the local agent; {registry} if it fails"
    return HostsFile(endpoint, _render(server_url(registry, plain_http=plain_http), host, comment))


def mirror_hosts(registry: str, agent: str, *, plain_http: bool = False) -> HostsFile:
    """The file making the agent a mirror of ``registry``, falling back to it."""
    comment = f"pulls from {registry} try the local agent first"
    return HostsFile(registry, _render(server_url(registry, plain_http=plain_http), agent, comment))


def is_ours(text: str) -> bool:
    return text.startswith(MARKER)
