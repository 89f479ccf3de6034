"""Real TLS for the webhook tests: a throwaway CA and a serving certificate."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import trustme


@dataclass
class Tls:
    ca: trustme.CA
    cert_file: Path
    key_file: Path

    def client_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        self.ca.configure_trust(ctx)
        return ctx

    def reissue(self, *names: str) -> None:
        """Write a new certificate in place, as cert-manager does on rotation."""
        cert = self.ca.issue_cert(*names)
        cert.private_key_pem.write_to_path(str(self.key_file))
        cert.cert_chain_pems[0].write_to_path(str(self.cert_file))


def make_tls(directory: Path) -> Tls:
    ca = trustme.CA()
    tls = Tls(ca, directory / "tls.crt", directory / "tls.key")
    tls.reissue("127.0.0.1", "shoal-webhook.shoal.svc")
    return tls
