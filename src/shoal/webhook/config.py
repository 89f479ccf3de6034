"""The webhook's config file, in the same style as the agent's (``shoal.config``).

A separate file because the webhook runs as its own Deployment with its own
ConfigMap; the agent never reads these keys and the webhook never reads the agent's.

```yaml
ServerConfig:            # the HTTPS endpoint the API server calls
  port: 8443
  tlsCertFile: /etc/shoal/tls/tls.crt
  tlsKeyFile: /etc/shoal/tls/tls.key
AccelerateConfig:        # what is rewritten, and how
  labelKey: k8s.aliyun.com/image-accelerate-mode
  labelValue: p2p
  registries: ["*.cr.aliyuncs.com", docker.io]
  p2pPort: 65001
SecretConfig:            # pull-secret clones
  enable: true
  syncTimeout: 5
  resyncPeriod: 300
ExporterConfig:          # /metrics, plain HTTP
  port: 65003
```

Unknown keys and bad values are refused at start with one line naming the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import msgspec

from shoal.config import Port, check_listen_address, convert_config, read_yaml

PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]

DEFAULT_LABEL_KEY = "k8s.aliyun.com/image-accelerate-mode"
DEFAULT_CONFIG_ANNOTATION = "k8s.aliyun.com/p2p-config"


class _Section(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, rename="camel"
):
    pass


class ServerConfig(_Section, frozen=True):
    """The HTTPS server the API server sends AdmissionReviews to."""

    #: listen address; empty means every address of every family
    listen: str = ""
    #: HTTPS port the API server sends AdmissionReviews to
    port: Port = 8443
    #: PEM certificate chain; it and the key are re-read when the files change (rotation)
    tls_cert_file: str = "/etc/shoal/tls/tls.crt"
    #: PEM private key of that certificate
    tls_key_file: str = "/etc/shoal/tls/tls.key"
    #: seconds between checks of the certificate files for a rotated certificate
    tls_reload_interval: PositiveFloat = 60.0
    #: least severe log message written to stderr
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    #: ``text``: one readable line per message; ``json``: one JSON object per line
    log_format: Literal["text", "json"] = "text"

    def __post_init__(self) -> None:
        check_listen_address(self.listen)


class AccelerateConfig(_Section, frozen=True):
    """Which Pods and images are rewritten to the P2P endpoint."""

    #: label on a Pod (or its namespace) that switches acceleration on
    label_key: str = DEFAULT_LABEL_KEY
    #: the value meaning "on"; any other value on the Pod's own label opts it out
    label_value: str = "p2p"
    #: annotation set to ``labelValue`` on every rewritten Pod (the reference's marker)
    mode_annotation: str = DEFAULT_LABEL_KEY
    #: annotation holding the JSON description of what was rewritten
    config_annotation: str = DEFAULT_CONFIG_ANNOTATION
    #: registry hosts (exact or glob, ``docker.io`` for Docker Hub) that are accelerated
    registries: tuple[str, ...] = ("*",)
    #: the agent's registry mirror port, the ``:65001`` of the rewritten address
    p2p_port: Port = 65001
    #: clone of pull secret ``S`` is named ``<prefix>S<suffix>``
    secret_prefix: str = "acr-credential-"
    #: see ``secretPrefix``
    secret_suffix: str = "-p2p"

    def __post_init__(self) -> None:
        if not self.label_key or not self.label_value:
            raise ValueError("labelKey and labelValue must not be empty")
        if self.p2p_port == 0:
            raise ValueError("p2pPort must not be 0")

    def clone_name(self, secret: str) -> str:
        return f"{self.secret_prefix}{secret}{self.secret_suffix}"

    def is_clone_name(self, secret: str) -> bool:
        return secret.startswith(self.secret_prefix) and secret.endswith(self.secret_suffix)


class SecretConfig(_Section, frozen=True):
    """The pull-secret clones and the controller that keeps them current."""

    #: create clones at all (off: only the Pod is rewritten)
    enable: bool = True
    #: seconds the webhook waits for the API to create a clone before answering anyway
    sync_timeout: PositiveFloat = 5.0
    #: seconds between full reconciliations of every clone (the watch covers the rest)
    resync_period: PositiveFloat = 300.0
    #: kubeconfig file; empty means the in-cluster service account
    kubeconfig: str = ""


class ExporterConfig(_Section, frozen=True):
    """Prometheus ``/metrics`` over plain HTTP, on a port of its own (the admission port
    speaks only TLS to the API server)."""

    #: serve ``/metrics`` at all
    enable: bool = True
    #: port of ``/metrics`` (plain HTTP, on ``ServerConfig.listen``)
    port: Port = 65003


class PreheatConfig(_Section, frozen=True):
    """The workload preheater (``shoal.webhook.preheater``): workloads labelled or
    annotated ``shoal.io/preheat: "true"`` (or in such a namespace) get their images
    put on the nodes their Pods can land on, through the roots' preheat jobs."""

    #: run the preheater at all (it needs ``roots`` and the operator credential)
    enable: bool = False
    #: the roots' control API addresses (``host:port``), as in the agents' P2PConfig.roots
    roots: tuple[str, ...] = ()
    #: file holding the roots' operator credential (their PreheatConfig.secretFile)
    secret_file: str = "/etc/shoal/preheat/secret"
    #: call the roots over HTTPS, checked against ``caFile``
    tls: bool = True
    #: PEM file of the CA the roots' certificates are signed by
    ca_file: str = "/etc/shoal/control/ca.crt"
    #: seconds between looks at every workload (a changed template is seen within this)
    resync_period: PositiveFloat = 15.0
    #: seconds the nodes keep a preheated image; 0: the roots' default TTL
    ttl: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    #: MB/s per node for these jobs; 0: the agents' own rateLimitMB
    rate: Annotated[float, msgspec.Meta(ge=0)] = 0.0


class WebhookConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    server: ServerConfig = msgspec.field(default_factory=ServerConfig, name="ServerConfig")
    accelerate: AccelerateConfig = msgspec.field(
        default_factory=AccelerateConfig, name="AccelerateConfig"
    )
    secrets: SecretConfig = msgspec.field(default_factory=SecretConfig, name="SecretConfig")
    exporter: ExporterConfig = msgspec.field(default_factory=ExporterConfig, name="ExporterConfig")
    preheat: PreheatConfig = msgspec.field(default_factory=PreheatConfig, name="PreheatConfig")


def parse_webhook_config(data: object) -> WebhookConfig:
    """Turn loaded YAML into a ``WebhookConfig``, or raise ``ConfigInvalidError``."""
    return convert_config(data, WebhookConfig, "webhook config")


def load_webhook_config(path: str | Path | None) -> WebhookConfig:
    if path is None:
        return WebhookConfig()
    return parse_webhook_config(read_yaml(path, "webhook config"))
