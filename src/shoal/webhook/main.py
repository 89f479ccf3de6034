"""``shoal webhook``: the composition root of the admission webhook.

Builds the Kubernetes client (in-cluster service account, or a kubeconfig), the secret
controller, the workload preheater (``PreheatConfig.enable``) and the HTTPS server,
runs them until SIGTERM or SIGINT, and shuts them down in reverse order so no admission
is cut off half way.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import socket

from shoal.config import ControlConfig
from shoal.config import PreheatConfig as RootPreheatConfig
from shoal.control.preheat_client import PreheatClient, operator_secret
from shoal.errors import ConfigInvalidError
from shoal.lifecycle import serve_app
from shoal.observability import Metrics
from shoal.observability.exporter import exporter_app
from shoal.observability.logs import setup_logging
from shoal.webhook.config import WebhookConfig, load_webhook_config
from shoal.webhook.controller import SecretController
from shoal.webhook.kube import KubeApiError, KubeClient
from shoal.webhook.preheater import WorkloadPreheater
from shoal.webhook.server import WebhookServer

log = logging.getLogger("shoal.webhook")


def run_webhook(args: argparse.Namespace) -> int:
    cfg = load_webhook_config(args.config)
    setup_logging(cfg.server.log_level, cfg.server.log_format)
    asyncio.run(serve(cfg))
    return 0


async def make_client(cfg: WebhookConfig) -> KubeClient:
    try:
        if cfg.secrets.kubeconfig:
            return await KubeClient.from_kubeconfig(cfg.secrets.kubeconfig)
        return KubeClient.in_cluster()
    except KubeApiError as exc:
        raise ConfigInvalidError(
            f"{exc.message} (set SecretConfig.kubeconfig, or SecretConfig.enable and "
            "PreheatConfig.enable: false)"
        ) from exc


async def serve(cfg: WebhookConfig, stop: asyncio.Event | None = None) -> None:
    """Run until ``stop`` is set (or a signal arrives when none is given)."""
    stop = stop or _stop_on_signals()
    async with contextlib.AsyncExitStack() as stack:
        controller: SecretController | None = None
        client: KubeClient | None = None
        if cfg.secrets.enable or cfg.preheat.enable:
            client = await stack.enter_async_context(await make_client(cfg))
        if cfg.secrets.enable and client is not None:
            controller = await stack.enter_async_context(
                SecretController(client, cfg.accelerate, cfg.secrets)
            )
        if cfg.preheat.enable and client is not None:
            roots = await stack.enter_async_context(preheat_client(cfg))
            await stack.enter_async_context(WorkloadPreheater(client, roots, cfg.preheat))
        metrics = Metrics("", "webhook", reference=False)
        server = await stack.enter_async_context(WebhookServer(cfg, controller, metrics))
        metrics.node = f"{socket.gethostname()}:{server.port}"
        if cfg.exporter.enable:
            runner, port = await serve_app(
                exporter_app(metrics), cfg.server.listen, cfg.exporter.port
            )
            stack.push_async_callback(runner.cleanup)
            log.info("metrics on port %d", port)
        log.info("%r ready", server)
        await stop.wait()
        log.info("stopping: %r %r", server, controller)


def preheat_client(cfg: WebhookConfig) -> PreheatClient:
    """The roots' job API, signed with the operator credential from ``secretFile``."""
    pcfg = cfg.preheat
    if not pcfg.roots:
        raise ConfigInvalidError("webhook config: PreheatConfig.roots is empty")
    secret = operator_secret(RootPreheatConfig(secret_file=pcfg.secret_file))
    if secret is None:
        raise ConfigInvalidError(
            f"webhook config: PreheatConfig.secretFile {pcfg.secret_file} is empty"
        )
    control = ControlConfig(tls=pcfg.tls, ca_file=pcfg.ca_file)
    return PreheatClient(pcfg.roots, secret, control=control)


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop
