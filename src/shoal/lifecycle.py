"""Shared plumbing of the long-running roles: flags over config, signals, listeners.

(Logging is set up by ``shoal.observability.logs.setup_logging``.)
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import re
import signal
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

from aiohttp import web
from msgspec.structs import replace as _replace

from shoal.config import Config, check_listen_address, load_config, parse_config
from shoal.errors import ConfigInvalidError, ShoalError


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
    return config.replace(proxy=proxy, p2p=p2p, exporter=exporter)


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


#: pending connections a listener queues (the kernel caps it at net.core.somaxconn)
LISTEN_BACKLOG = 4096


async def serve_app(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Listen with ``app`` on ``host`` ("" = every IPv4 and IPv6 address) and ``port``
    (0 = kernel's choice); return the runner (to clean up) and the bound port."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    # a root takes the joins of every agent for every layer at the same instant (32
    # agents x 5 blobs = 160 connects in the bench); aiohttp's default backlog of 128
    # dropped SYNs and agents gave up on a healthy root
    site = web.TCPSite(
        runner, host=host or None, port=port, reuse_address=True, backlog=LISTEN_BACKLOG
    )
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise ShoalError(describe_os_error(exc)) from exc
    bound: int = runner.addresses[0][1]
    return runner, bound


#: asyncio's words for a listener that could not bind: "error while attempting to bind
#: on address ('::', 65002, 0, 0): address already in use"
_BIND = re.compile(r"bind on address \('([^']*)', (\d+)[^)]*\): (.*)$")


def describe_os_error(exc: OSError) -> str:
    """One line for an error of the machine (a port in use, a file, a directory)."""
    text = exc.strerror or str(exc)
    bind = _BIND.search(text)
    if bind is not None:
        host, port, why = bind.groups()
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return f"cannot listen on {where}: {why}"
    if exc.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL):
        return f"cannot listen: {text}"
    if exc.filename is not None:
        target = f" -> {exc.filename2}" if exc.filename2 is not None else ""
        return f"{exc.filename}{target}: {text}"
    return text
