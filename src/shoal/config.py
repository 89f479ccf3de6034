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
import re
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import msgspec
import yaml

from shoal.errors import ConfigInvalidError

Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
NonNegativeFloat = Annotated[float, msgspec.Meta(ge=0)]
PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]

#: the piece store's bounds (``shoal.cache.layout``, a layer above this one)
MIN_PIECE_SIZE = 16 * 1024
MAX_PIECE_SIZE = 16 * (1 << 20)

T = TypeVar("T")

GiB = 1 << 30
MiB = 1 << 20


class _Section(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, rename="camel"
):
    pass


class DeployConfig(_Section, frozen=True):
    """Which role this process plays and where its logs go."""

    #: the role this file is for: ``shoal agent`` and ``shoal root`` refuse the other's
    mode: Literal["agent", "root"] = "agent"
    #: directory for ``audit.log`` when ``logAuditMode`` is ``file``
    log_dir: str = "/dadi-p2p/log"
    #: write one audit line per operation
    log_audit: bool = False
    #: ``stdout``: audit lines on standard output; ``file``: ``logDir/audit.log``
    log_audit_mode: Literal["stdout", "file"] = "stdout"
    #: bytes ``audit.log`` may reach before it is rotated to ``audit.log.1``; 0 never rotates
    log_audit_max_size: Annotated[int, msgspec.Meta(ge=0)] = 100 * MiB
    #: rotated audit files kept (``audit.log.1`` ... ``audit.log.N``); older ones are deleted
    log_audit_backups: Annotated[int, msgspec.Meta(ge=1)] = 5
    #: least severe log message written to stderr
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    #: ``text``: one readable line per message; ``json``: one JSON object per line
    log_format: Literal["text", "json"] = "text"
    #: the ``node`` label of every metric (``IP:port``); empty means derive it at start
    node_name: str = ""


class ExporterConfig(_Section, frozen=True):
    """The Prometheus exporter: the reference's ``DADIP2P_*`` families and shoal's own."""

    #: serve ``/metrics`` at all
    enable: bool = True
    #: port of ``/metrics`` (0: the kernel's choice)
    port: Port = 65003
    #: false: serve ``/metrics`` on the proxy port instead of a port of its own
    standalone_exporter_port: bool = True
    #: seconds the ``DADIP2P_*`` rates and ``MaxLatency`` cover; set it to the scrape
    #: interval so that every request falls in exactly one scrape
    rate_window: Annotated[float, msgspec.Meta(ge=1, le=3600)] = 30.0


class ProxyConfig(_Section, frozen=True):
    """The registry mirror the node's container runtime talks to (on a root: the
    control API). The limits below hold for every HTTP port the process serves."""

    #: listen address; empty means every address of every family (IPv4 and IPv6)
    listen: str = ""
    #: agent: the registry mirror the container runtime pulls through; root: the
    #: control API agents join at (and ``GET /healthz``)
    port: Port = 65001
    #: blobs fetched upstream at once; more wait their turn
    proxy_concurrency_limit: PositiveInt = 128
    #: seconds from a request's first byte to its last header line (slow-loris guard)
    header_timeout: PositiveFloat = 10.0
    #: seconds a connection may stay open without a complete request (idle keep-alive)
    idle_timeout: PositiveFloat = 60.0
    #: open connections in total; 0 means three quarters of the open-file limit
    max_connections: Annotated[int, msgspec.Meta(ge=0)] = 0
    #: open connections from one client address; 0 means the role's default: 256 for
    #: an agent's mirror (the node's runtime opens many), 32 for a root's control API
    #: (an agent keeps at most 16 to a root; each TLS connection costs a root ~0.3 MiB)
    max_connections_per_client: Annotated[int, msgspec.Meta(ge=0)] = 0

    def __post_init__(self) -> None:
        _check_listen(self.listen)


class P2PConfig(_Section, frozen=True):
    """The peer network between agents and roots."""

    #: listen address of the piece server; empty means every address of every family
    listen: str = ""
    #: port of the piece server other agents fetch pieces from
    p2p_port: Port = 65002
    #: downstream (upload to peers) limit in MB/s (1 MB = 2**20 bytes); 0 means none
    throttle_limit_mb: Annotated[int, msgspec.Meta(ge=0)] = msgspec.field(
        default=512, name="throttleLimitMB"
    )
    #: roots as ``host:port`` (``[v6]:port`` for IPv6); blobs map to them by rendezvous hash
    roots: tuple[str, ...] = ()
    #: cluster secret peers prove to each other; ``secretFile`` wins when both are set
    secret: str = ""
    #: file holding the cluster secret (a mounted Secret); read at start
    secret_file: str = ""
    #: zone label of this node; the scheduler prefers parents in the same zone
    zone: str = ""
    #: address other nodes reach this node's peer port at. Empty: ``listen`` when it is
    #: one address, else the address this machine's host name resolves to, which on many
    #: machines is 127.0.0.1 or 127.0.1.1 and unreachable from other nodes (the agent
    #: warns at start); set it to the node's IP then
    advertise: str = ""
    #: TCP congestion control of the piece server's connections (the bulk uploads);
    #: empty means the system's (``net.ipv4.tcp_congestion_control``)
    congestion: str = "cubic"
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
    #: the private key of ``tlsCertFile`` (PEM)
    tls_key_file: str = "/etc/shoal/peer/tls.key"
    #: PEM file of the CA peer certificates are checked against
    tls_ca_file: str = "/etc/shoal/peer/ca.crt"

    def __post_init__(self) -> None:
        _check_listen(self.listen)
        for root in self.roots:
            host, sep, port = root.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
                raise ValueError(f"roots: {root!r} is not host:port")


class ControlConfig(_Section, frozen=True):
    """The control API between agents and roots (joins, reports, forwarded credentials).

    TLS by default: an agent's join carries the client's registry ``Authorization``, so
    the API must never run in clear on a real network. The certificate comes from the
    cluster's own CA (the chart or cert-manager makes it); ``tls: false`` is a
    development mode and both sides log it loudly at start.
    """

    #: serve (root) and call (agent) the control API over HTTPS
    tls: bool = True
    #: PEM file of the CA agents verify the roots' certificates against
    ca_file: str = "/etc/shoal/control/ca.crt"
    #: PEM file of the root's certificate chain; re-read when it changes
    cert_file: str = "/etc/shoal/control/tls.crt"
    #: PEM file of the key of ``certFile``; re-read when it changes
    key_file: str = "/etc/shoal/control/tls.key"
    #: distinct peers one source address may have joined as; 0 means no cap
    peers_per_source: Annotated[int, msgspec.Meta(ge=0)] = 8
    #: seconds a join waits for a new member's peer handshake before it is answered 503
    #: (join again); the handshake is refused after 3 times this (keep it below the
    #: agents' P2PConfig.rootTimeout)
    vet_timeout: PositiveFloat = 3.0


class CacheConfig(_Section, frozen=True):
    """The node's piece store."""

    #: directory of the piece store; empty means no store: the agent only relays
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
            raise ValueError("aioEnable: must be 0, 1, true or false")
        if self.piece_size and not MIN_PIECE_SIZE <= self.piece_size <= MAX_PIECE_SIZE:
            raise ValueError(
                f"pieceSize: must be 0 (by blob size) or {MIN_PIECE_SIZE}..{MAX_PIECE_SIZE} "
                f"bytes, not {self.piece_size}"
            )

    @property
    def aio(self) -> bool:
        return bool(self.aio_enable)


class RegistryConfig(_Section, frozen=True):
    """How to reach one upstream registry."""

    #: ``host[:port]`` exactly as it appears in image references
    host: str
    #: talk plain HTTP instead of HTTPS (the default for every registry, ``default``
    #: included, unless its host is listed here with ``plainHTTP: true``)
    plain_http: bool = msgspec.field(default=False, name="plainHTTP")
    #: PEM file of the CA to trust for this registry, in addition to the system's
    ca_file: str = ""
    #: skip TLS verification (self-signed test registries only)
    insecure_skip_verify: bool = False
    #: hosts (``host[:port]``, or ``*.suffix``) this registry may redirect blob reads to,
    #: such as its object storage; a redirect anywhere else is refused. An exact entry
    #: may be on an internal address, a ``*.`` pattern only on a public one
    redirect_hosts: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not _is_authority(self.host):
            raise ValueError(f"host: not a registry host: {self.host!r}")
        for entry in self.redirect_hosts:
            if not _is_authority(entry.removeprefix("*.")):
                raise ValueError(f"redirectHosts: not a host or *.suffix pattern: {entry!r}")


class UpstreamConfig(_Section, frozen=True):
    """Which registries the mirror serves and how to reach them."""

    #: registry used when the request names none (no ``?ns=``, no ``.distributed.`` host)
    default: str = ""
    #: how to reach each registry (below); one not listed is spoken to over HTTPS with
    #: the system's CAs
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

    #: serve ``/accelerator/<blob URL>`` on the proxy port at all
    enable: bool = True
    #: hosts a blob URL may point at; empty means the registries of ``UpstreamConfig``
    allowed_hosts: tuple[str, ...] = ()
    #: answer only clients on the loopback interface
    loopback_only: bool = True

    def __post_init__(self) -> None:
        for entry in self.allowed_hosts:
            if not _is_authority(entry):
                raise ValueError(f"allowedHosts: not a host[:port]: {entry!r}")


class PickerPolicy(_Section, frozen=True):
    """The agent's piece picker (``shoal.swarm.picker``): which piece of which parent, now."""

    #: pieces at the front of the wanted range fetched in order (the runtime streams them)
    window: PositiveInt = 4
    #: requests in flight to one parent
    per_parent: PositiveInt = 3
    #: requests in flight in all, per blob
    total: PositiveInt = 12
    #: rarest-first candidates looked at per pick
    samples: PositiveInt = 4
    #: a piece whose bytes flow this many times the mean piece time has stalled
    stall_factor: Annotated[float, msgspec.Meta(gt=0)] = 10.0
    #: seconds; a piece is never judged stalled sooner
    stall_floor: NonNegativeFloat = 0.5
    #: seconds a request may wait at a parent before its bytes start (the parent may be
    #: waiting for the piece itself: asked again elsewhere, the parent not blamed)
    queue_timeout: Annotated[float, msgspec.Meta(gt=0)] = 30.0
    #: seconds a piece may run before the first one has landed (nothing to compare with)
    first_piece_timeout: NonNegativeFloat = 30.0
    #: seconds a parent that sent a bad piece is not asked again
    ban_seconds: NonNegativeFloat = 60.0
    #: duplicate requests at most, once every missing piece is requested
    endgame: Annotated[int, msgspec.Meta(ge=0)] = 4
    #: seconds between asks for more parents
    refresh_interval: NonNegativeFloat = 1.0
    #: weight of the newest piece time in the running mean (0..1)
    ewma: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.2
    #: a parent this many times slower per piece than the median of the others is slow
    #: (0 = never judged so)
    slow_ratio: NonNegativeFloat = 3.0
    #: pieces from a parent before it may be judged slow
    slow_samples: PositiveInt = 8
    #: a parent holding requests that has sent nothing for this many mean piece times
    #: is asked whether it is alive (a ping on its connection)
    silence_factor: Annotated[float, msgspec.Meta(gt=0)] = 4.0
    #: seconds; a parent is never suspected of silence sooner
    silence_floor: NonNegativeFloat = 0.5


class SchedulerPolicy(_Section, frozen=True):
    """The root's scheduler (``shoal.swarm.scheduler``): the striped forest and spares."""

    #: stripes per blob = child slots of an interior node
    stripes: PositiveInt = 4
    #: children of the seed (the root) per stripe
    seed_fanout: PositiveInt = 1
    #: offer a stripe parent as fetching its whole stripe (children queue ahead on it)
    queue_on_stripe: bool = True
    #: mesh parents offered beside the stripe parents
    spares: Annotated[int, msgspec.Meta(ge=0)] = 0
    #: random candidates scored per spare choice
    sample: PositiveInt = 32
    #: spare children (or active uploads) a peer takes before it counts as loaded
    child_slots: PositiveInt = 6
    #: pieces that make a spare fully useful
    useful_enough: PositiveInt = 8
    #: seconds a parent reported bad or slow is not offered again to the reporter
    ban_seconds: NonNegativeFloat = 60.0
    #: seconds a slow report counts against a parent
    slow_memory: NonNegativeFloat = 30.0
    #: distinct agents reporting bad pieces ban a parent for everyone; as many reporting
    #: it unreachable make it dead for everyone
    global_ban_reporters: PositiveInt = 2
    #: seconds after an agent's last call to the root in which reports that it is
    #: unreachable do not make it dead for everyone: it is running, only slow to answer
    #: its peers (a saturated host, a starved link), and dropping it from every swarm
    #: would send its children to the origin
    alive_window: NonNegativeFloat = 3.0
    #: seconds without a word from an agent before the root drops it from every swarm
    peer_timeout: Annotated[float, msgspec.Meta(gt=0)] = 15.0


class DownloadPolicy(_Section, frozen=True):
    """One blob download at an agent (``shoal.swarm.download``): its talk with the root."""

    #: joins sent to a root that answers late before the next root is asked
    join_tries: PositiveInt = 3
    #: seconds the root may hold an ask for piece hashes it has not computed yet
    hash_wait: NonNegativeFloat = 2.0
    #: seconds before asking again when an answer brought no new hash
    hash_pause: NonNegativeFloat = 0.05
    #: seconds between health probes of a root whose call failed
    probe_interval: Annotated[float, msgspec.Meta(gt=0)] = 0.2
    #: probes refused outright (nothing listens) before the root counts as gone; a
    #: root that only answers late counts as gone after ``P2PConfig.rootTimeout``
    refused_probes: PositiveInt = 3
    #: seconds between asks whether the root has checked the whole digest
    verdict_poll: Annotated[float, msgspec.Meta(gt=0)] = 0.05
    #: such asks before the agent checks the digest itself
    verdict_tries: PositiveInt = 100
    #: seconds a satisfied on-demand (partial) download stays joined for more ranges
    linger: NonNegativeFloat = 10.0
    #: seconds a parent has to answer a liveness ping
    ping_timeout: Annotated[float, msgspec.Meta(gt=0)] = 1.0
    #: seconds between report batches to a root (one batch for every blob it schedules)
    report_interval: Annotated[float, msgspec.Meta(gt=0)] = 0.25
    #: seconds between asks for pushed parent sets when there is nothing to report
    push_poll: Annotated[float, msgspec.Meta(gt=0)] = 0.5


class SwarmConfig(_Section, frozen=True):
    """The swarm's tunables; the defaults are the measured ones (docs/swarm.md)."""

    #: the agent's choice of piece and parent, per blob
    picker: PickerPolicy = msgspec.field(default_factory=PickerPolicy)
    #: the root's stripe trees and spare parents
    scheduler: SchedulerPolicy = msgspec.field(default_factory=SchedulerPolicy)
    #: a download's talk with its root: joins, hashes, doubts, reports
    download: DownloadPolicy = msgspec.field(default_factory=DownloadPolicy)


class PreheatConfig(_Section, frozen=True):
    """Preheat: an image put on the nodes a rollout will land on before it starts
    (``docs/preheat.md``). Agents take work from the roots' preheat jobs; roots hold the
    jobs and serve the job API to operators and the webhook's controller."""

    #: agent: take preheat work from the roots at all
    enable: bool = True
    #: agent: MB/s (1 MB = 2**20 bytes) of preheat piece fetches on this node at most,
    #: whatever a job asks; 0 means no cap of the node's own (a job's ``rate`` still holds)
    rate_limit_mb: NonNegativeFloat = msgspec.field(default=20.0, name="rateLimitMB")
    #: agent: while a pull of the node's runtime downloads through the swarm, preheat
    #: reads wait (each at most a few seconds), so the node's link goes to the pull first
    yield_to_pulls: bool = True
    #: root: the operator credential that signs the job API (create, list, cancel); the
    #: cluster secret does not, so a node cannot start jobs. ``secretFile`` wins; both
    #: empty: the job API is off (agents' polls still work)
    secret: str = ""
    #: file holding the operator credential (a mounted Secret); read at start
    secret_file: str = ""
    #: root: seconds a job's blobs stay kept on the nodes when the job names no TTL
    default_ttl: PositiveFloat = 3600.0
    #: root: the longest TTL a job may ask for, seconds
    max_ttl: PositiveFloat = 7 * 86400.0
    #: root: jobs held at once (a finished job counts until its TTL ends)
    max_jobs: PositiveInt = 256
    #: root: a job's work (with its registry credentials) is handed only to a poll that
    #: comes from the address the agent advertises (its node's IP)
    check_source: bool = True


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
    swarm: SwarmConfig = msgspec.field(default_factory=SwarmConfig, name="SwarmConfig")
    control: ControlConfig = msgspec.field(default_factory=ControlConfig, name="ControlConfig")
    preheat: PreheatConfig = msgspec.field(default_factory=PreheatConfig, name="PreheatConfig")

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
    except UnicodeDecodeError as exc:
        raise ConfigInvalidError(
            f"{label}: {path} is not UTF-8 text (byte {exc.start}: {exc.reason})"
        ) from exc
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
    own = _OWN_CHECK.match(text)  # a section's __post_init__ names its field first
    if own is not None and key != "(top level)":
        return f"{key}.{own['field']}: {own['rest']}"
    return f"{key}: {text}"


_OWN_CHECK = re.compile(r"^(?P<field>[a-z][A-Za-z0-9]*): (?P<rest>.*)$", re.DOTALL)


def _check_listen(value: str) -> None:
    try:
        check_listen_address(value)
    except ConfigInvalidError as exc:
        raise ValueError(f"listen: {exc.message}") from exc


def _is_authority(value: str) -> bool:
    """``host`` or ``host:port`` (``[v6]:port``), no path, no space, no userinfo."""
    if not value or any(c.isspace() or c in "/@?#" for c in value):
        return False
    host, sep, port = value.rpartition(":")
    if sep and not value.endswith("]") and ("[" in value or host.count(":") == 0):
        return bool(host) and port.isdigit() and 0 < int(port) <= 65535
    return True


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
