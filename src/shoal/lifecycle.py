"""Shared plumbing of the long-running roles: flags over config, signals, listeners.

Their HTTP ports run on ``shoal.httpserver`` (``serve_app``, re-exported here); logging
is set up by ``shoal.observability.logs.setup_logging``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import ssl
import tempfile
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

from msgspec.structs import replace as _replace

from shoal.config import Config, check_listen_address, load_config, parse_config
from shoal.control.auth import cluster_secret
from shoal.errors import ConfigInvalidError, describe_os_error
from shoal.httpserver import (
    SERVER_LIMITS,
    TLS_CONTEXT,
    LogLimiter,
    ServerLimits,
    gate_of,
    serve_app,
)

log = logging.getLogger(__name__)

__all__ = [
    "SERVER_LIMITS",
    "TLS_CONTEXT",
    "LogLimiter",
    "ServerLimits",
    "config_from_args",
    "describe_os_error",
    "gate_of",
    "serve_app",
    "serve_until_signalled",
    "supervised",
]


def config_from_args(args: argparse.Namespace, role: str) -> Config:
    config = load_config(args.config) if args.config else parse_config(None)
    if config.deploy.mode != role:
        raise ConfigInvalidError(
            f"config: DeployConfig.mode is {config.deploy.mode!r} but this is `shoal {role}`"
        )
    proxy, p2p, exporter = config.proxy, config.p2p, config.exporter
    if args.listen is not None:
        listen = check_listen_address(args.listen)
        proxy = _replace(proxy, listen=listen)
        p2p = _replace(p2p, listen=listen)
    for flag, value in (
        ("--proxy-port", args.proxy_port),
        ("--p2p-port", args.p2p_port),
        ("--exporter-port", args.exporter_port),
    ):
        if value is not None and not 0 <= value <= 65535:
            raise ConfigInvalidError(f"{flag}: {value} is not a port")
    if args.proxy_port is not None:
        proxy = _replace(proxy, port=args.proxy_port)
    if args.p2p_port is not None:
        p2p = _replace(p2p, p2p_port=args.p2p_port)
    if args.exporter_port is not None:
        exporter = _replace(exporter, port=args.exporter_port)
    if getattr(args, "advertise", None):
        if any(c in args.advertise for c in "$() /") or not args.advertise.strip("[]"):
            raise ConfigInvalidError(f"--advertise: {args.advertise!r} is not an address")
        p2p = _replace(p2p, advertise=args.advertise)
    config = config.replace(proxy=proxy, p2p=p2p, exporter=exporter)
    check_files(config, role)
    return config


#: seconds before a failed task's first restart; doubled each time, at most ``MAX_BACKOFF``
BACKOFF = 0.5
MAX_BACKOFF = 10.0


async def supervised(name: str, run: Callable[[], Awaitable[None]]) -> None:
    """Run the long-lived task ``run`` for as long as its owner lets it: an exception is
    logged with its traceback and the task starts again (after a growing pause), so a bug
    in one message (a root's sweep that died on one peer's odd join) costs one round of
    that task, not the task for the rest of the process's life. Cancellation ends it."""
    delay = BACKOFF
    while True:
        try:
            await run()
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s failed; starting it again in %.1f s", name, delay)
            await asyncio.sleep(delay)
            delay = min(2 * delay, MAX_BACKOFF)


async def serve_until_signalled(
    make: Callable[[], AbstractAsyncContextManager[object]],
) -> None:
    """Build the service inside the running loop, run it until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with make():
        settle_collector()
        await stop.wait()


#: the collector's youngest-generation threshold for a running service (CPython's
#: default is 700 allocations)
GC_YOUNG = 20_000


def settle_collector() -> None:
    """Once a service has started: what it built so far (modules, config, the loop's
    machinery) leaves the collector's view, and young collections run every
    ``GC_YOUNG`` allocations instead of 700.

    A busy agent allocates per socket read and per event, almost all of it freed by
    reference counting; with the default threshold the collector ran hundreds of times
    a second, each older collection walking every object the process holds (perf on
    an agent in ``shoal bench -n 16``: 7 % of its CPU in ``gc_collect_main`` and its
    visitors). Cycles are still collected, only in larger batches.
    """
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG, older, oldest)


def check_files(config: Config, role: str) -> None:
    """Everything the config names on disk, checked before the role starts: a missing CA
    file or an unwritable directory is one line naming its key, not a traceback later.
    (Here, not in ``shoal.config``: parsing the config does no IO, so the sans-IO core
    may import it.)"""
    for i, reg in enumerate(config.upstream.registries):
        if reg.ca_file:
            _check_ca(reg.ca_file, f"UpstreamConfig.registries[{i}].caFile")
    deploy = config.deploy
    if deploy.log_audit and deploy.log_audit_mode == "file":
        _check_writable_dir(deploy.log_dir, "DeployConfig.logDir")
    if config.cache.path:
        _check_writable_dir(config.cache.path, "CacheConfig.path")
    control = config.control
    if control.tls and role == "root":
        _check_cert(control.cert_file, control.key_file)
    elif control.tls and config.p2p.roots:
        _check_ca(control.ca_file, "ControlConfig.caFile")
    if role == "root" or (config.p2p.roots and config.cache.path):
        # the secret (or its file) as the role will read it, before its first log line
        cluster_secret(config.p2p.secret, config.p2p.secret_file)


def _check_ca(path: str, key: str) -> None:
    try:
        # a bare context: the system's bundle is not what is being checked
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=path)
    except FileNotFoundError as exc:
        raise ConfigInvalidError(f"config: {key}: no such file {path}") from exc
    except OSError as exc:
        raise ConfigInvalidError(f"config: {key}: cannot read {path}: {exc.strerror}") from exc
    except ssl.SSLError as exc:
        raise ConfigInvalidError(f"config: {key}: {path} holds no PEM certificate") from exc


def _check_cert(cert: str, key: str) -> None:
    for path, name in ((cert, "ControlConfig.certFile"), (key, "ControlConfig.keyFile")):
        try:
            Path(path).read_bytes()
        except OSError as exc:
            raise ConfigInvalidError(
                f"config: {name}: cannot read {path}: {exc.strerror}"
                " (or set ControlConfig.tls: false for a development cluster)"
            ) from exc
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        raise ConfigInvalidError(
            f"config: ControlConfig.certFile: {cert} and keyFile {key} are not a "
            f"PEM certificate chain and its key ({exc.reason or exc})"
        ) from exc


def _check_writable_dir(path: str, key: str) -> None:
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigInvalidError(
            f"config: {key}: {path} is not a writable directory: {reason}"
        ) from exc
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigInvalidError(f"config: {key}: {path} is not a writable directory")
