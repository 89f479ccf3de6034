"""Shared plumbing of the long-running roles: flags over config, logging, signals.

Their HTTP ports run on ``shoal.httpserver`` (``serve_app``, re-exported here).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

from msgspec.structs import replace as _replace

from shoal.config import Config, check_files, check_listen_address, load_config, parse_config
from shoal.errors import ConfigInvalidError
from shoal.httpserver import (
    SERVER_LIMITS,
    TLS_CONTEXT,
    LogLimiter,
    ServerLimits,
    gate_of,
    serve_app,
)

__all__ = [
    "SERVER_LIMITS",
    "TLS_CONTEXT",
    "LogLimiter",
    "ServerLimits",
    "config_from_args",
    "gate_of",
    "serve_app",
    "serve_until_signalled",
    "setup_logging",
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
    config = config.replace(proxy=proxy, p2p=p2p, exporter=exporter)
    check_files(config, role)
    return config


def setup_logging() -> None:
    """INFO by default; ``SHOAL_LOG=debug`` (or any level name) for more."""
    level = os.environ.get("SHOAL_LOG", "info").upper()
    logging.basicConfig(
        level=getattr(logging, level, logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


async def serve_until_signalled(
    make: Callable[[], AbstractAsyncContextManager[object]],
) -> None:
    """Build the service inside the running loop, run it until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with make():
        await stop.wait()
