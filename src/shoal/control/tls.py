"""TLS for the control API: the root serves with the cluster CA's certificate, agents
verify it. ``ControlConfig.tls: false`` is the development mode; both sides say so in
the log at start, loudly, because joins then carry registry credentials in clear.

The root's certificate is re-read when its files change (cert-manager renews it in
place through the Secret volume), so a renewal needs no restart.
"""

from __future__ import annotations

import logging
import os
import ssl

from shoal.config import ControlConfig
from shoal.errors import ConfigInvalidError

log = logging.getLogger("shoal.control")

PLAIN_WARNING = (
    "ControlConfig.tls is false: the control API runs in PLAIN HTTP, and the registry "
    "credentials agents forward in joins cross the network readable by anyone on it. "
    "Development clusters only."
)


def client_context(cfg: ControlConfig) -> ssl.SSLContext | None:
    """What an agent verifies roots with; ``None`` in the development mode.

    The cluster's CA alone: a root is never trusted for a certificate a public CA
    issued, and not loading the system's bundle (~30 ms of CPU) keeps every agent's
    start cheap."""
    if not cfg.tls:
        log.warning(PLAIN_WARNING)
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the chain and the host name
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_verify_locations(cafile=cfg.ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigInvalidError(
            f"config: ControlConfig.caFile: cannot load {cfg.ca_file}: {exc}"
        ) from exc
    return ctx


class ServerTLS:
    """The root's TLS context, reloaded in place when the certificate files change."""

    def __init__(self, cfg: ControlConfig) -> None:
        self.cfg = cfg
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._stamp: tuple[float, float] = (0.0, 0.0)
        self.reloads = 0
        self.reload()

    def __repr__(self) -> str:
        return f"<ServerTLS {self.cfg.cert_file} [{self.reloads} loads]>"

    def reload(self) -> bool:
        """Load the certificate if its files changed; True when it did."""
        cert, key = self.cfg.cert_file, self.cfg.key_file
        try:
            stamp = (os.stat(cert).st_mtime, os.stat(key).st_mtime)
        except OSError as exc:
            raise ConfigInvalidError(
                f"config: ControlConfig.certFile/keyFile: {exc.filename}: {exc.strerror}"
            ) from exc
        if stamp == self._stamp:
            return False
        try:
            self.context.load_cert_chain(cert, key)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigInvalidError(
                f"config: ControlConfig.certFile: cannot load {cert} with {key}: {exc}"
            ) from exc
        self._stamp = stamp
        self.reloads += 1
        return True


def server_tls(cfg: ControlConfig) -> ServerTLS | None:
    if not cfg.tls:
        log.warning(PLAIN_WARNING)
        return None
    return ServerTLS(cfg)
