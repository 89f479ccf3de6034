"""Configuration: one YAML file, parsed in one place into frozen, typed structs.

The file format is the reference system's (``DeployConfig``, ``ExporterConfig`` and the
``p2p.v2`` value names such as ``proxyConcurrencyLimit``, ``p2pPort``, ``capacity``,
``aioEnable``, ``throttleLimitMB``) because users migrate from it with their config in
hand. Sections the reference does not name (``ProxyConfig``, ``P2PConfig``,
``CacheConfig``, ``UpstreamConfig``, ``AcceleratorConfig``) follow the same style.

Unknown keys and bad values are refused at start with one line that names the key: a
typo in a config file must never be silently ignored on a thousand nodes.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import msgspec
import yaml

from shoal.errors import ConfigInvalidError

Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
NonNegativeFloat = Annotated[float, msgspec.Meta(ge=0)]

T = TypeVar("T")

GiB = 1 << 30
MiB = 1 << 20


class _Section(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, rename="camel"
):
    pass


class DeployConfig(_Section, frozen=True):
    """Which role this process plays and where its logs go."""

    mode: Literal["agent", "root"] = "agent"
    #: directory for ``audit.log`` when ``logAuditMode`` is ``file``
    log_dir: str = "/dadi-p2p/log"
    #: write one audit line per operation
    log_audit: bool = False
    log_audit_mode: Literal["stdout", "file"] = "stdout"
    #: the ``node`` label of every metric (``IP:port``); empty means derive it at start
    node_name: str = ""


class ExporterConfig(_Section, frozen=True):
    """The Prometheus exporter of ``DADIP2P_*`` metrics."""

    enable: bool = True
    port: Port = 65003
    #: false: serve ``/metrics`` on the proxy port instead of a port of its own
    standalone_exporter_port: bool = True


class ProxyConfig(_Section, frozen=True):
    """The registry mirror the node's container runtime talks to."""

    #: listen address; empty means every address of every family (IPv4 and IPv6)
    listen: str = ""
    port: Port = 65001
    #: blobs fetched upstream at once; more wait their turn
    proxy_concurrency_limit: PositiveInt = 128


class P2PConfig(_Section, frozen=True):
    """The peer network between agents and roots."""

    listen: str = ""
    p2p_port: Port = 65002
    #: downstream (upload to peers) limit in MB/s (1 MB = 2**20 bytes); 0 means none
    throttle_limit_mb: Annotated[int, msgspec.Meta(ge=0)] = msgspec.field(
        default=512, name="throttleLimitMB"
    )
    #: roots as ``host:port`` (``[v6]:port`` for IPv6); blobs map to them by rendezvous hash
    roots: tuple[str, ...] = ()
    #: cluster secret peers prove to each other; ``secretFile`` wins when both are set
    secret: str = ""
    secret_file: str = ""
    #: zone label of this node; the scheduler prefers parents in the same zone
    zone: str = ""
    #: address other nodes reach this node's peer port at; empty means derive it
    advertise: str = ""
    #: seconds an agent waits for a blob's root before fetching from the origin itself
    root_timeout: Annotated[float, msgspec.Meta(gt=0)] = 5.0
    #: blobs this agent may fetch from the origin at once when no root answers
    fallback_limit: Annotated[int, msgspec.Meta(ge=0)] = 2
    #: on serving an image manifest, join the swarms of its config and every layer at
    #: once (they flow in parallel; the runtime reads what has landed); costs peer
    #: traffic and disk for layers the node already has unpacked
    prefetch: bool = True
    #: pieces between peers over TLS (mutual, TLS 1.3, the cluster's CA): turn it on
    #: when the cluster serves private images, whose layers cross the node network
    #: otherwise in clear (the HMAC handshake authenticates peers, it does not encrypt)
    tls: bool = False
    #: the peer certificate chain and key every agent and root presents (PEM; one for the
    #: whole cluster will do: peers are reached by address and proven by the handshake)
    tls_cert_file: str = "/etc/shoal/peer/tls.crt"
    tls_key_file: str = "/etc/shoal/peer/tls.key"
    #: PEM file of the CA peer certificates are checked against
    tls_ca_file: str = "/etc/shoal/peer/ca.crt"


class CacheConfig(_Section, frozen=True):
    """The node's piece store."""

    path: str = "/dadi-p2p/cache"
    #: bytes of shoal's own data kept on disk before least-recently-used blobs go
    capacity: Annotated[int, msgspec.Meta(ge=0)] = 4 * GiB
    #: I/O strategy switch kept from the reference format (0 or 1, or a boolean)
    aio_enable: bool | int = 0
    #: bytes per piece for new blobs; 0 means choose by blob size
    piece_size: Annotated[int, msgspec.Meta(ge=0)] = 0

    def __post_init__(self) -> None:
        if (
            isinstance(self.aio_enable, int)
            and not isinstance(self.aio_enable, bool)
            and self.aio_enable not in (0, 1)
        ):
            raise ValueError("aioEnable must be 0, 1, true or false")

    @property
    def aio(self) -> bool:
        return bool(self.aio_enable)


class RegistryConfig(_Section, frozen=True):
    """How to reach one upstream registry."""

    #: ``host[:port]`` exactly as it appears in image references
    host: str
    #: talk plain HTTP instead of HTTPS
    plain_http: bool = msgspec.field(default=False, name="plainHTTP")
    #: PEM file of the CA to trust for this registry, in addition to the system's
    ca_file: str = ""
    #: skip TLS verification (self-signed test registries only)
    insecure_skip_verify: bool = False

    def __post_init__(self) -> None:
        if not self.host or "/" in self.host or any(c.isspace() for c in self.host):
            raise ValueError(f"not a registry host: {self.host!r}")


class UpstreamConfig(_Section, frozen=True):
    """Which registries the mirror serves and how to reach them."""

    #: registry used when the request names none (no ``?ns=``, no ``.distributed.`` host)
    default: str = ""
    registries: tuple[RegistryConfig, ...] = ()
    #: serve only registries listed in ``registries`` (plus ``default``)
    restrict_to_listed: bool = True
    #: seconds a positive access check (HEAD with the client's credentials) is reused
    access_check_ttl: NonNegativeFloat = 30.0
    #: seconds to wait for an upstream's answer before giving up
    timeout: Annotated[float, msgspec.Meta(gt=0)] = 60.0

    def registry(self, host: str) -> RegistryConfig | None:
        for reg in self.registries:
            if reg.host == host:
                return reg
        return None

    def allowed(self, host: str) -> bool:
        if not self.restrict_to_listed:
            return True
        return host == self.default or self.registry(host) is not None


class AcceleratorConfig(_Section, frozen=True):
    """``/accelerator/<blob URL>`` for overlaybd's on-demand reads."""

    enable: bool = True
    #: hosts a blob URL may point at; empty means the registries of ``UpstreamConfig``
    allowed_hosts: tuple[str, ...] = ()
    #: answer only clients on the loopback interface
    loopback_only: bool = True


class Config(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    deploy: DeployConfig = msgspec.field(default_factory=DeployConfig, name="DeployConfig")
    exporter: ExporterConfig = msgspec.field(default_factory=ExporterConfig, name="ExporterConfig")
    proxy: ProxyConfig = msgspec.field(default_factory=ProxyConfig, name="ProxyConfig")
    p2p: P2PConfig = msgspec.field(default_factory=P2PConfig, name="P2PConfig")
    cache: CacheConfig = msgspec.field(default_factory=CacheConfig, name="CacheConfig")
    upstream: UpstreamConfig = msgspec.field(default_factory=UpstreamConfig, name="UpstreamConfig")
    accelerator: AcceleratorConfig = msgspec.field(
        default_factory=AcceleratorConfig, name="AcceleratorConfig"
    )

    def replace(self, **changes: Any) -> Config:
        return msgspec.structs.replace(self, **changes)


def convert_config(data: object, kind: type[T], label: str) -> T:
    """Loaded YAML into ``kind``, or ``ConfigInvalidError`` in one line naming the key."""
    if data is None:
        data = {}
    try:
        return msgspec.convert(data, kind)
    except msgspec.ValidationError as exc:
        raise ConfigInvalidError(f"{label}: {_key_message(str(exc))}") from exc
    except ConfigInvalidError as exc:  # a section's own check (an address, say)
        raise ConfigInvalidError(f"{label}: {exc.message}") from exc


def read_yaml(path: str | Path, label: str) -> object:
    """The YAML document in ``path``; unreadable or malformed files are one-line errors."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigInvalidError(f"{label}: cannot read {path}: {exc.strerror}") from exc
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "invalid YAML"
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigInvalidError(f"{label}: {path}: {first}{where}") from exc


def parse_config(data: object) -> Config:
    """Turn already-loaded YAML data into a ``Config``, or raise ``ConfigInvalidError``."""
    return convert_config(data, Config, "config")


def load_config(path: str | Path) -> Config:
    return parse_config(read_yaml(path, "config"))


def _key_message(msg: str) -> str:
    """msgspec says ``... - at `$.DeployConfig.mode```; lead with the key instead."""
    text, sep, where = msg.rpartition(" - at `")
    if not sep:
        text, where = msg, "$"
    key = where.rstrip("`").removeprefix("$").lstrip(".") or "(top level)"
    if text.startswith("Object contains unknown field `"):
        field = text.split("`")[1]
        full = f"{key}.{field}" if key != "(top level)" else field
        return f"unknown key {full}"
    return f"{key}: {text}"


def check_listen_address(value: str) -> str:
    """An empty string (every address) or an IPv4/IPv6 literal; brackets are removed."""
    stripped = value.strip().removeprefix("[").removesuffix("]")
    if stripped == "":
        return ""
    try:
        ipaddress.ip_address(stripped)
    except ValueError as exc:
        raise ConfigInvalidError(f"listen address is not an IP address: {value!r}") from exc
    return stripped
