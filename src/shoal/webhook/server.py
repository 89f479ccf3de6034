"""The webhook's HTTPS server: bytes in, ``review()`` decides, clones made, bytes out.

Paths are the API server's way of saying why it called (see ``review.py``):

- ``POST /mutate/pod``: the Pod's own label selected it (objectSelector entry);
- ``POST /mutate/namespace``: its namespace's label did (namespaceSelector entry);
- ``GET /healthz``: liveness and readiness.

Every answer to a review is HTTP 200 with ``allowed: true``: a body that cannot be
understood, a failing API server or a slow clone never block a Pod, and nothing the
body holds can make the webhook answer 500 (a fault in ``review()`` itself is logged
as a bug in one line and the Pod is allowed unchanged). A body that is not JSON (or
nests too deep for the parser) is allowed unchanged like any other it cannot
understand; one nested deeper than ``MAX_DEPTH`` is allowed unchanged without being
looked at; one larger than ``MAX_BODY`` is answered 413, unread.
Each review that is not understood costs one warning line. The TLS certificate is
re-read when its files change (cert-manager rotates it in place through the Secret
volume).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import ssl
import time
from types import TracebackType
from typing import Self

from aiohttp import web

from shoal.errors import ConfigInvalidError, ShoalError
from shoal.observability import Metrics
from shoal.observability.collectors import ADMISSION
from shoal.webhook.config import WebhookConfig
from shoal.webhook.controller import SecretController
from shoal.webhook.review import Decision, Trigger, response, review

log = logging.getLogger("shoal.webhook")

#: the API server sends at most a few MiB; a Pod with huge env blocks stays well below
MAX_BODY = 8 << 20
#: a Pod nests about 20 deep (managedFields included); a review deeper than this is not
#: one the API server sent
MAX_DEPTH = 64

REVIEWS = "shoal_webhook_admission_reviews_total"
REVIEWS_HELP = (
    "AdmissionReviews answered, by trigger (pod, namespace) and result: patched, "
    "unchanged, invalid (a body that could not be understood, allowed unchanged)"
)
CLONES_LATE = "shoal_webhook_secret_clones_late_total"
CLONES_LATE_HELP = (
    "Pull-secret clones not there when their Pod was admitted (retried in the background), "
    "by reason: timeout (SecretConfig.syncTimeout), api (the API server refused or failed)"
)


class WebhookServer:
    """HTTPS AdmissionReview endpoint; owns its runner and its certificate-reload task."""

    def __init__(
        self,
        cfg: WebhookConfig,
        controller: SecretController | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._cfg = cfg
        self._controller = controller
        self.metrics = metrics or Metrics("", "webhook", reference=False)
        self._runner: web.AppRunner | None = None
        self._reload: asyncio.Task[None] | None = None
        self._ssl = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._ssl.minimum_version = ssl.TLSVersion.TLSv1_2
        self._cert_stamp: tuple[float, float] = (0.0, 0.0)
        self.port = 0
        self.reviews = 0
        self.patched = 0
        self.refused = 0

    def __repr__(self) -> str:
        state = f"port {self.port}" if self._runner else "stopped"
        return (
            f"<WebhookServer [{state} | reviews: {self.reviews}, patched: {self.patched}, "
            f"refused: {self.refused}]>"
        )

    def _load_cert(self) -> bool:
        """Load the certificate if its files changed; True when it did."""
        srv = self._cfg.server
        try:
            stamp = (os.stat(srv.tls_cert_file).st_mtime, os.stat(srv.tls_key_file).st_mtime)
        except OSError as exc:
            raise ConfigInvalidError(f"webhook TLS: {exc.filename}: {exc.strerror}") from exc
        if stamp == self._cert_stamp:
            return False
        try:
            self._ssl.load_cert_chain(srv.tls_cert_file, srv.tls_key_file)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigInvalidError(f"webhook TLS: cannot load certificate: {exc}") from exc
        self._cert_stamp = stamp
        return True

    async def _reload_loop(self) -> None:
        while True:
            await asyncio.sleep(self._cfg.server.tls_reload_interval)
            try:
                if self._load_cert():
                    log.info("TLS certificate reloaded")
            except ConfigInvalidError as exc:
                log.warning("%s (keeping the previous certificate)", exc.message)

    async def __aenter__(self) -> Self:
        self._load_cert()
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_post("/mutate/pod", self._pod)
        app.router.add_post("/mutate/namespace", self._namespace)
        app.router.add_get("/healthz", self._health)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        srv = self._cfg.server
        site = web.TCPSite(
            self._runner, host=srv.listen or None, port=srv.port, ssl_context=self._ssl
        )
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            self._runner = None
            raise ConfigInvalidError(
                f"webhook: cannot listen on port {srv.port}: {exc.strerror}"
            ) from exc
        addresses = self._runner.addresses
        self.port = int(addresses[0][1]) if addresses else srv.port
        self._reload = asyncio.create_task(self._reload_loop(), name="webhook-tls-reload")
        log.info("webhook listening on port %d", self.port)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._reload is not None:
            self._reload.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reload
            self._reload = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _pod(self, request: web.Request) -> web.Response:
        return await self._mutate(request, "pod")

    async def _namespace(self, request: web.Request) -> web.Response:
        return await self._mutate(request, "namespace")

    async def _mutate(self, request: web.Request, trigger: Trigger) -> web.Response:
        start = time.perf_counter()
        self.reviews += 1
        if request.content_length is not None and request.content_length > MAX_BODY:
            self.refused += 1
            log.warning(
                "review of %d bytes refused unread (limit %d)", request.content_length, MAX_BODY
            )
            raise web.HTTPRequestEntityTooLarge(MAX_BODY, request.content_length)
        raw = await request.read()
        try:
            body: object = json.loads(raw)
        except (ValueError, RecursionError):
            body = None  # review() says: not a JSON object
        try:
            if _deeper_than(body, MAX_DEPTH):
                decision = Decision(
                    uid=_uid_of(body), understood=False, reason=f"nested deeper than {MAX_DEPTH}"
                )
            else:
                decision = review(body, trigger, self._cfg.accelerate)
        except Exception as exc:  # a bug in review(): never a 500 for the API server
            decision = Decision(uid=_uid_of(body), understood=False, reason="internal error")
            log.error(
                "review %s failed (a bug in shoal; the Pod is allowed unchanged): %s: %s",
                decision.uid or "-",
                type(exc).__name__,
                " ".join(str(exc).split())[:200],
            )
        if not decision.understood:
            log.warning("review not understood, allowed unchanged: %s", decision.reason)
        else:
            log.info(
                "pod %s/%s: %s", decision.namespace or "-", decision.pod or "-", decision.reason
            )
        await self._ensure_clones(decision)
        if decision.patch:
            self.patched += 1
        result = "patched" if decision.patch else "unchanged" if decision.understood else "invalid"
        self.metrics.inc(REVIEWS, REVIEWS_HELP, trigger=trigger, result=result)
        self.metrics.observe(ADMISSION, time.perf_counter() - start, trigger=trigger)
        return web.json_response(response(decision))

    async def _ensure_clones(self, decision: Decision) -> None:
        """Create the Pod's secret clones before it is admitted, within the time allowed."""
        ctl = self._controller
        if ctl is None or not decision.secrets or not decision.namespace:
            return
        if decision.dry_run:  # sideEffects: NoneOnDryRun
            return
        try:
            failed = await asyncio.wait_for(
                ctl.ensure(decision.namespace, decision.secrets),
                self._cfg.secrets.sync_timeout,
            )
        except TimeoutError:
            for name in decision.secrets:
                ctl.later(decision.namespace, name, "timed out while admitting the Pod")
            self.metrics.inc(CLONES_LATE, CLONES_LATE_HELP, len(decision.secrets), reason="timeout")
            return
        except ShoalError as exc:
            log.warning("pod %s/%s: clones not made: %s", decision.namespace, decision.pod, exc)
            return
        if failed:
            self.metrics.inc(CLONES_LATE, CLONES_LATE_HELP, len(failed), reason="api")
            log.warning(
                "pod %s/%s admitted before the clones of %s exist (retrying)",
                decision.namespace,
                decision.pod,
                ", ".join(failed),
            )


def _deeper_than(body: object, limit: int) -> bool:
    """Whether ``body`` nests more than ``limit`` levels (walked without recursion)."""
    stack: list[tuple[object, int]] = [(body, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)
    return False


def _uid_of(body: object) -> str:
    request = body.get("request") if isinstance(body, dict) else None
    uid = request.get("uid") if isinstance(request, dict) else None
    return uid if isinstance(uid, str) else ""
