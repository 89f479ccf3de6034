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
