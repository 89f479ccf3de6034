"""The ``node`` label of every metric: ``IP:port`` of this process, as the reference has it."""

from __future__ import annotations

import ipaddress
import logging
import socket

from shoal.config import Config

log = logging.getLogger(__name__)


def node_label(config: Config, port: int) -> str:
    """The ``node`` label of the metrics: ``IP:port`` of this process."""
    if config.deploy.node_name:
        return config.deploy.node_name
    host = config.proxy.listen
    if not host or host in ("0.0.0.0", "::"):
        try:
            host = socket.gethostbyname(socket.gethostname())
        except OSError:
            host = "127.0.0.1"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def advertise_host(config: Config) -> str:
    """The host part of this node's peer address as other nodes should dial it."""
    listen = config.p2p.listen
    if listen and listen not in ("0.0.0.0", "::"):
        return f"[{listen}]" if ":" in listen else listen
    label = node_label(config, 0)
    host = label.rsplit(":", 1)[0]
    if _is_loopback(host.strip("[]")) and any(not _is_loopback_root(r) for r in config.p2p.roots):
        log.warning(
            "P2PConfig.advertise is empty and this machine's name resolves to %s: other "
            "nodes cannot fetch pieces from this one; set P2PConfig.advertise to its IP",
            host,
        )
    return host


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _is_loopback_root(root: str) -> bool:
    return _is_loopback(root.rsplit(":", 1)[0].strip("[]"))
