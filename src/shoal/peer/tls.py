"""TLS for piece transfers (``P2PConfig.tls``): mutual, TLS 1.3, the cluster's own CA.

The peer protocol's handshake (HMAC over both nonces with the cluster secret) proves
that both ends are cluster members, but the bytes after it travel in clear: a private
image's layers, readable by anyone on the node network. With ``tls: true`` every peer
connection is TLS first and the same handshake runs inside it.

- **Mutual**: a server accepts only clients whose certificate the cluster CA signed,
  so nothing outside the cluster even reaches the protocol's handshake.
- **No host names**: peers dial each other by address, and one certificate for the
  whole cluster (a Secret every node mounts) is the simple deployment, so the chain
  is checked but the name is not; the HMAC handshake inside says who is a member.
- **Cost**: no ``sendfile`` under TLS (the bytes must be encrypted in user space), so
  the server reads a piece into a pooled buffer and writes it through the TLS
  transport, and the client decrypts straight into its piece buffer. Measured in
  ``docs/peer.md`` against the same TLS stack in a plain socket loop.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from shoal.config import P2PConfig
from shoal.errors import ConfigInvalidError


@dataclass(frozen=True, slots=True)
class PeerTLS:
    server: ssl.SSLContext
    client: ssl.SSLContext


def peer_tls(config: P2PConfig) -> PeerTLS | None:
    """The contexts ``P2PConfig`` asks for, or None when ``tls`` is off; a missing or
    unreadable file is one line naming its key."""
    if not config.tls:
        return None
    for key, path in (
        ("P2PConfig.tlsCertFile", config.tls_cert_file),
        ("P2PConfig.tlsKeyFile", config.tls_key_file),
        ("P2PConfig.tlsCaFile", config.tls_ca_file),
    ):
        if not Path(path).is_file():
            raise ConfigInvalidError(f"config: {key}: no such file {path!r}")
    try:
        return contexts(config.tls_cert_file, config.tls_key_file, config.tls_ca_file)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigInvalidError(
            f"config: P2PConfig.tls: cannot load the peer TLS files: {exc}"
        ) from exc


def contexts(cert_file: str, key_file: str, ca_file: str) -> PeerTLS:
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    for ctx in (server, client):
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.load_cert_chain(cert_file, key_file)
        ctx.load_verify_locations(cafile=ca_file)
        ctx.verify_mode = ssl.CERT_REQUIRED
    client.check_hostname = False  # by address; the handshake inside proves membership
    return PeerTLS(server, client)
