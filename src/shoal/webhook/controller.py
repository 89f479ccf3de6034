"""The pull-secret controller: make clones exist before Pods need them, keep them current.

The reference system copies secrets asynchronously and warns that pulls may fail until
the copy exists. Here the webhook calls ``ensure()`` for a Pod's pull secrets and waits
for the API to confirm each clone (bounded by ``SecretConfig.syncTimeout``) before it
answers, so by the time the Pod exists so does every clone it names. What could not be
done in time goes to a retry set that the controller works through in the background.

After that the controller keeps clones current: a watch on docker config Secrets
reconciles a clone when its source changes (or the clone is deleted while its source
lives), and a periodic resync lists every clone shoal owns and reconciles its source,
which also covers sources a watch missed. The decisions themselves are ``plan()`` in
``pullsecrets.py``; this module only performs them. Concurrent writers (two webhook
replicas admitting Pods that share a secret) meet as ``409 Conflict``: the loser reads
again and finds nothing left to do.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Iterable
from types import TracebackType
from typing import Self, cast

from shoal.webhook.config import AccelerateConfig, SecretConfig
from shoal.webhook.kube import KubeApiError, KubeClient
from shoal.webhook.pullsecrets import DOCKERCONFIGJSON, MANAGED_BY, MANAGER, Plan, is_managed, plan
from shoal.webhook.types import Secret

log = logging.getLogger("shoal.webhook.secrets")

Key = tuple[str, str]  # (namespace, source secret name)


class SecretController:
    """Owns the background tasks; the composition root enters it with ``async with``."""

    RETRY_INTERVAL = 5.0
    CONFLICT_ATTEMPTS = 3

    def __init__(self, client: KubeClient, cfg: AccelerateConfig, scfg: SecretConfig) -> None:
        self._client = client
        self._cfg = cfg
        self._scfg = scfg
        self._tracked: set[Key] = set()
        self._pending: set[Key] = set()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.counts: Counter[str] = Counter()

    def __repr__(self) -> str:
        c = self.counts
        return (
            f"<SecretController [tracked: {len(self._tracked)}, pending: {len(self._pending)} | "
            f"created: {c['create']}, updated: {c['update']}, deleted: {c['delete']}, "
            f"failed: {c['failed']}]>"
        )

    async def __aenter__(self) -> Self:
        self._tasks = [
            asyncio.create_task(self._resync_loop(), name="secrets-resync"),
            asyncio.create_task(self._watch_loop(), name="secrets-watch"),
            asyncio.create_task(self._retry_loop(), name="secrets-retry"),
        ]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def reconcile(self, namespace: str, source: str) -> Plan:
        """Read the source and its clone, then create, update or delete the clone."""
        clone = self._cfg.clone_name(source)
        for _ in range(self.CONFLICT_ATTEMPTS):
            src, existing = await asyncio.gather(
                self._client.get_secret(namespace, source),
                self._client.get_secret(namespace, clone),
            )
            step = plan(namespace, source, src, existing, self._cfg)
            try:
                await self._apply(step)
            except KubeApiError as exc:
                if exc.status == 409:
                    continue
                raise
            if step.action != "none":
                self.counts[step.action] += 1
                log.info("clone %s/%s: %s (%s)", namespace, clone, step.action, step.reason)
            if src is not None and step.action in ("create", "update", "none"):
                self._tracked.add((namespace, source))
            else:
                self._tracked.discard((namespace, source))
            return step
        raise KubeApiError(f"clone {namespace}/{clone}: conflicting writers", status=409)

    async def _apply(self, step: Plan) -> None:
        if step.action == "create" and step.body is not None:
            await self._client.create_secret(step.namespace, step.body)
        elif step.action == "update" and step.body is not None:
            await self._client.replace_secret(step.namespace, step.name, step.body)
        elif step.action == "delete":
            await self._client.delete_secret(step.namespace, step.name)

    async def ensure(self, namespace: str, sources: Iterable[str]) -> list[str]:
        """Make every clone exist now; returns the sources that failed (retried later)."""
        names = list(dict.fromkeys(sources))
        results = await asyncio.gather(
            *(self.reconcile(namespace, s) for s in names), return_exceptions=True
        )
        failed: list[str] = []
        for name, result in zip(names, results, strict=True):
            if isinstance(result, BaseException):
                if isinstance(result, asyncio.CancelledError):
                    raise result
                failed.append(name)
                self.later(namespace, name, result)
        return failed

    def later(self, namespace: str, source: str, why: object = None) -> None:
        """Queue a reconcile for the retry loop (used when the webhook ran out of time)."""
        self.counts["failed"] += 1
        log.warning("clone of %s/%s: will retry: %s", namespace, source, why)
        self._pending.add((namespace, source))
        self._wake.set()

    async def _retry_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.RETRY_INTERVAL)
            self._wake.clear()
            batch, self._pending = self._pending, set()
            for namespace, source in batch:
                try:
                    await self.reconcile(namespace, source)
                except KubeApiError as exc:
                    log.warning("clone of %s/%s: %s", namespace, source, exc.message)
                    self._pending.add((namespace, source))

    async def resync(self) -> None:
        """List every clone shoal owns and reconcile its source."""
        clones, _ = await self._client.list_secrets(label_selector=f"{MANAGED_BY}={MANAGER}")
        for clone in clones:
            key = _source_of(clone)
            if key is not None:
                self._tracked.add(key)
        for namespace, source in sorted(self._tracked):
            try:
                await self.reconcile(namespace, source)
            except KubeApiError as exc:
                self.later(namespace, source, exc.message)

    async def _resync_loop(self) -> None:
        while True:
            try:
                await self.resync()
            except KubeApiError as exc:
                log.warning("resync of pull-secret clones failed: %s", exc.message)
            await asyncio.sleep(self._scfg.resync_period)

    async def _watch_loop(self) -> None:
        selector = f"type={DOCKERCONFIGJSON}"
        backoff = 1.0
        while True:
            try:
                _, version = await self._client.list_secrets(field_selector=selector)
                while True:
                    async for event in self._client.watch_secrets(version, field_selector=selector):
                        obj = event.get("object") or {}
                        meta = obj.get("metadata") or {}
                        version = str(meta.get("resourceVersion") or version)
                        if event.get("type") != "BOOKMARK":
                            await self._on_event(str(event.get("type")), obj)
                    backoff = 1.0
            except KubeApiError as exc:
                if exc.status != 410:
                    log.warning("watch of secrets: %s; again in %.0f s", exc.message, backoff)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 60.0)

    async def _on_event(self, kind: str, obj: dict[str, object]) -> None:
        secret = cast(Secret, obj)
        meta = secret.get("metadata") or {}
        namespace, name = meta.get("namespace", ""), meta.get("name", "")
        if is_managed(secret):
            key = _source_of(secret)
            if kind == "DELETED" and key is not None and key in self._tracked:
                self._pending.add(key)  # recreate it if its source still lives
                self._wake.set()
            return
        if (namespace, name) in self._tracked:
            self._pending.add((namespace, name))
            self._wake.set()


def _source_of(clone: Secret) -> Key | None:
    meta = clone.get("metadata") or {}
    for owner in meta.get("ownerReferences") or []:
        if owner.get("kind") == "Secret" and owner.get("name"):
            return meta.get("namespace", ""), owner["name"]
    return None
