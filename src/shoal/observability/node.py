"""The ``node`` label of every metric: ``IP:port`` of this process, as the reference has it."""

from __future__ import annotations

import socket

from shoal.config import Config


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
    return label.rsplit(":", 1)[0]
