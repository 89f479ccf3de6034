"""``shoal node-setup``: write the node's containerd ``hosts.toml`` files, then exit.

Run by the agent DaemonSet's init container with the host's containerd certs directory
mounted. The accelerated registries come from the agent's own config
(``UpstreamConfig.registries`` and ``default``) so the webhook, the agent and containerd
agree on one list; the mirror-mode registries come from ``--mirror``. Writing is
atomic (temp file, then rename: containerd re-reads hosts.toml on every pull and must
never see half a file), idempotent, and removes files this command wrote earlier for
registries no longer listed.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from shoal.config import Config, load_config
from shoal.errors import ConfigInvalidError
from shoal.webhook.etchosts import update_hosts_file
from shoal.webhook.hoststoml import HostsFile, distributed_hosts, is_ours, mirror_hosts
from shoal.webhook.images import is_distributed

HOSTS_TOML = "hosts.toml"


@dataclass
class Outcome:
    written: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    #: directories holding a hosts.toml shoal did not write, left alone
    foreign: list[str] = field(default_factory=list)
    #: registries that cannot take the distributed form (IPs, ports, single labels)
    skipped: list[str] = field(default_factory=list)


def plan_files(
    distributed: Iterable[str],
    mirrors: Iterable[str],
    *,
    agent: str,
    port: int,
    plain_http: Iterable[str] = (),
    resolve_locally: bool = False,
) -> tuple[list[HostsFile], list[str]]:
    """Every file to write, and the registries that cannot take the distributed form."""
    plain = set(plain_http)
    files: dict[str, HostsFile] = {}
    skipped: list[str] = []
    for reg in dict.fromkeys(distributed):
        f = distributed_hosts(
            reg, agent, port, plain_http=reg in plain, resolve_locally=resolve_locally
        )
        if f is None:
            skipped.append(reg)
        else:
            files[f.directory] = f
    for reg in dict.fromkeys(mirrors):
        files[reg] = mirror_hosts(reg, agent, plain_http=reg in plain)
    return list(files.values()), skipped


def write_files(hosts_dir: Path, files: Iterable[HostsFile], *, prune: bool = True) -> Outcome:
    out = Outcome()
    hosts_dir.mkdir(parents=True, exist_ok=True)
    wanted = {f.directory for f in files}
    for f in files:
        target = hosts_dir / f.directory / HOSTS_TOML
        if target.exists():
            current = target.read_text(encoding="utf-8", errors="replace")
            if not is_ours(current):
                out.foreign.append(f.directory)
                continue
            if current == f.text:
                out.unchanged.append(f.directory)
                continue
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".hosts.", dir=target.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(f.text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
        out.written.append(f.directory)
    if prune:
        for sub in sorted(hosts_dir.iterdir()):
            target = sub / HOSTS_TOML
            if sub.name in wanted or not target.is_file():
                continue
            if is_ours(target.read_text(encoding="utf-8", errors="replace")):
                target.unlink()
                if not any(sub.iterdir()):
                    sub.rmdir()
                out.removed.append(sub.name)
    return out


def containerd_uses(containerd_config: Path, hosts_dir_on_host: str) -> str | None:
    """A warning when containerd's config does not point ``config_path`` at the dir."""
    try:
        text = containerd_config.read_text(encoding="utf-8")
    except OSError as exc:
        return f"cannot read {containerd_config}: {exc.strerror}"
    import tomllib

    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        return f"cannot parse {containerd_config}: {exc}"
    plugins = doc.get("plugins", {})
    for key in ("io.containerd.grpc.v1.cri", "io.containerd.cri.v1.images"):
        registry = plugins.get(key, {}).get("registry", {})
        paths = str(registry.get("config_path", "")).split(":")
        if hosts_dir_on_host.rstrip("/") in [p.rstrip("/") for p in paths if p]:
            return None
    return (
        f"{containerd_config} has no registry config_path = {hosts_dir_on_host!r}: "
        "containerd will not read the hosts.toml files (see docs/install.md)"
    )


def registries_of(cfg: Config) -> tuple[list[str], list[str]]:
    """Hosts the agent serves, and those of them reached over plain HTTP."""
    hosts = [r.host for r in cfg.upstream.registries]
    if cfg.upstream.default and cfg.upstream.default not in hosts:
        hosts.insert(0, cfg.upstream.default)
    return hosts, [r.host for r in cfg.upstream.registries if r.plain_http]


def run_node_setup(args: argparse.Namespace) -> int:
    """Write the files once; with ``--every S``, again every S seconds (forever), for
    runtimes whose own tooling removes them (k3s empties its certs.d at every start)."""
    every = getattr(args, "every", 0) or 0
    if every < 0:
        raise ConfigInvalidError(f"--every: {every} is not a number of seconds")
    rc = setup_once(args, quiet=False)
    while every:
        time.sleep(every)
        setup_once(args, quiet=True)
    return rc


def setup_once(args: argparse.Namespace, *, quiet: bool) -> int:
    cfg = load_config(args.config) if args.config else Config()
    distributed, plain = registries_of(cfg)
    distributed += list(args.distributed or [])
    port = args.p2p_port or cfg.proxy.port
    agent = args.agent or f"http://127.0.0.1:{cfg.proxy.port}"
    if not agent.startswith(("http://", "https://")):
        raise ConfigInvalidError(
            f"--agent must be a URL like http://127.0.0.1:65001, not {agent!r}"
        )
    local = bool(args.etc_hosts)
    files, skipped = plan_files(
        distributed, args.mirror or [], agent=agent, port=port, plain_http=plain,
        resolve_locally=local,
    )  # fmt: skip
    if local:
        endpoints = [f.directory for f in files if is_distributed(f.directory)]
        if update_hosts_file(Path(args.etc_hosts), endpoints):
            print(f"node-setup: {args.etc_hosts}: {len(endpoints)} name(s) -> 127.0.0.1")
    out = write_files(Path(args.hosts_dir), files, prune=not args.no_prune)
    out.skipped = skipped
    if quiet and not (out.written or out.removed):
        return 0
    for name, items in (
        ("written", out.written),
        ("unchanged", out.unchanged),
        ("removed", out.removed),
        ("left alone (not written by shoal)", out.foreign),
        ("not expressible as <a>.distributed.<b>", out.skipped),
    ):
        if items:
            print(f"node-setup: {name}: {', '.join(items)}")
    if args.containerd_config:
        warning = containerd_uses(Path(args.containerd_config), args.host_path or args.hosts_dir)
        if warning:
            print(f"node-setup: warning: {warning}", file=sys.stderr)
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--hosts-dir",
        required=True,
        metavar="DIR",
        help="containerd's registry config_path (e.g. /etc/containerd/certs.d)",
    )
    p.add_argument("--config", "-c", metavar="FILE", help="the agent's YAML config file")
    p.add_argument(
        "--distributed",
        action="append",
        metavar="REGISTRY",
        help="also route <a>.distributed.<b> for this registry to the agent (repeatable)",
    )
    p.add_argument(
        "--mirror",
        action="append",
        metavar="REGISTRY",
        help="make the agent a mirror of this registry, falling back to it (repeatable)",
    )
    p.add_argument(
        "--agent", metavar="URL", help="the agent (default http://127.0.0.1:<proxy port>)"
    )
    p.add_argument("--p2p-port", type=int, metavar="PORT", help="port in <a>.distributed.<b>:PORT")
    p.add_argument("--no-prune", action="store_true", help="keep files for unlisted registries")
    p.add_argument(
        "--every",
        type=float,
        default=0,
        metavar="SECONDS",
        help="keep running and write the files again every SECONDS (0: once, then exit)",
    )
    p.add_argument(
        "--etc-hosts",
        metavar="FILE",
        help="the node's hosts file: resolve <a>.distributed.<b> to 127.0.0.1 there, so "
        "containerd sends the -p2p pull secrets' credentials to the agent",
    )
    p.add_argument(
        "--containerd-config",
        metavar="FILE",
        help="containerd's config.toml, checked for config_path (a warning, not an error)",
    )
    p.add_argument(
        "--host-path",
        metavar="DIR",
        help="the hosts dir as the host sees it, when mounted elsewhere in the container",
    )
