"""The few Kubernetes API calls the webhook makes, over aiohttp.

The webhook reads and writes Secrets (get, list, watch, create, replace, delete); the
chart's bootstrap Job also reads and patches its own webhook configuration; the
workload preheater lists nodes, namespaces and workloads and writes Events. A
small typed client is clearer than the generated one and is tested against a real
HTTP server on loopback that answers with the API's own JSON shapes.
``kubernetes_asyncio`` is used for what it does well: reading a kubeconfig (contexts,
client certificates, exec plugins) when the webhook runs outside a cluster.

Errors become ``KubeApiError`` carrying the API's status code, so callers can tell a
conflict (409: someone else wrote first, read again) from a real failure.
"""

from __future__ import annotations

import json
import os
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from types import TracebackType
from typing import Any, Self, cast
from urllib.parse import quote

import aiohttp

from shoal.errors import ShoalError
from shoal.webhook.types import Secret, WatchEvent

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
MWC_PATH = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"


class KubeApiError(ShoalError):
    """The API server refused a request or could not be reached (``status`` 0)."""

    def __init__(self, message: str, *, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class KubeClient:
    """Secrets through the Kubernetes REST API; one aiohttp session, owned here."""

    def __init__(
        self,
        server: str,
        *,
        ssl_context: ssl.SSLContext | bool = True,
        token: str = "",
        token_file: str = "",
        timeout: float = 30.0,
    ) -> None:
        self.server = server.rstrip("/")
        self._ssl = ssl_context
        self._token = token
        self._token_file = token_file
        self._timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        state = "open" if self._session and not self._session.closed else "closed"
        return f"<KubeClient {self.server} [{state}]>"

    @classmethod
    def in_cluster(cls) -> KubeClient:
        host = os.environ.get("KUBERNETES_SERVICE_HOST")
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        if not host or not (SA_DIR / "token").exists():
            raise KubeApiError("not in a cluster: no KUBERNETES_SERVICE_HOST or no token")
        if ":" in host:
            host = f"[{host}]"
        ctx = ssl.create_default_context(cafile=str(SA_DIR / "ca.crt"))
        # bound service account tokens rotate: read the file at each request
        return cls(f"https://{host}:{port}", ssl_context=ctx, token_file=str(SA_DIR / "token"))

    @classmethod
    async def from_kubeconfig(cls, path: str, context: str | None = None) -> KubeClient:
        from kubernetes_asyncio import config as kconfig
        from kubernetes_asyncio.client import Configuration

        conf = Configuration()
        try:
            await kconfig.load_kube_config(
                config_file=path, context=context, client_configuration=conf
            )
        except Exception as exc:  # the loader raises many kinds
            raise KubeApiError(f"cannot load kubeconfig {path}: {exc}") from exc
        ctx: ssl.SSLContext | bool
        if conf.verify_ssl is False:
            ctx = False
        else:
            ctx = ssl.create_default_context(cafile=conf.ssl_ca_cert or None)
            if conf.cert_file:
                ctx.load_cert_chain(conf.cert_file, conf.key_file)
        token = str(conf.api_key.get("BearerToken") or conf.api_key.get("authorization") or "")
        token = token.removeprefix("Bearer ").strip()
        return cls(str(conf.host), ssl_context=ctx, token=token)

    async def __aenter__(self) -> Self:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=None)
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": "shoal-webhook"}
        token = self._token
        if self._token_file:
            try:
                token = Path(self._token_file).read_text().strip()
            except OSError as exc:
                raise KubeApiError(f"cannot read token: {exc.strerror}") from exc
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return headers

    async def _call(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        body: object = None,
        allow_404: bool = False,
        content_type: str = "application/json",
    ) -> dict[str, Any] | None:
        if self._session is None:
            raise KubeApiError("client is not open")
        try:
            async with self._session.request(
                method,
                self.server + path,
                params=params,
                data=json.dumps(body) if body is not None else None,
                headers={**self._headers(), "Content-Type": content_type},
                ssl=self._ssl,
                timeout=aiohttp.ClientTimeout(total=self._timeout),
            ) as resp:
                text = await resp.text()
                if resp.status == 404 and allow_404:
                    return None
                if resp.status >= 400:
                    raise KubeApiError(
                        f"{method} {path}: {resp.status} {_status_message(text)}",
                        status=resp.status,
                    )
                return cast(dict[str, Any], json.loads(text)) if text else {}
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise KubeApiError(f"{method} {path}: {exc or type(exc).__name__}") from exc

    @staticmethod
    def _secrets(namespace: str | None, name: str | None = None) -> str:
        base = f"/api/v1/namespaces/{quote(namespace)}/secrets" if namespace else "/api/v1/secrets"
        return f"{base}/{quote(name)}" if name else base

    async def get_secret(self, namespace: str, name: str) -> Secret | None:
        got = await self._call("GET", self._secrets(namespace, name), allow_404=True)
        return cast(Secret, got) if got is not None else None

    async def create_secret(self, namespace: str, body: Secret) -> Secret:
        got = await self._call("POST", self._secrets(namespace), body=body)
        return cast(Secret, got)

    async def replace_secret(self, namespace: str, name: str, body: Secret) -> Secret:
        got = await self._call("PUT", self._secrets(namespace, name), body=body)
        return cast(Secret, got)

    async def delete_secret(self, namespace: str, name: str) -> None:
        await self._call("DELETE", self._secrets(namespace, name), allow_404=True)

    async def get_webhook_configuration(self, name: str) -> dict[str, Any] | None:
        """A MutatingWebhookConfiguration (the bootstrap Job writes its caBundle)."""
        return await self._call("GET", f"{MWC_PATH}/{quote(name)}", allow_404=True)

    async def patch_webhook_configuration(
        self, name: str, ops: list[dict[str, Any]]
    ) -> dict[str, Any]:
        """A JSON Patch (RFC 6902) of a MutatingWebhookConfiguration."""
        got = await self._call(
            "PATCH",
            f"{MWC_PATH}/{quote(name)}",
            body=ops,
            content_type="application/json-patch+json",
        )
        return got or {}

    async def list_secrets(
        self,
        namespace: str | None = None,
        *,
        label_selector: str = "",
        field_selector: str = "",
    ) -> tuple[list[Secret], str]:
        """Every matching Secret (following ``continue``) and the list's resourceVersion."""
        items: list[Secret] = []
        token = ""
        while True:
            params = {"limit": "500"}
            if label_selector:
                params["labelSelector"] = label_selector
            if field_selector:
                params["fieldSelector"] = field_selector
            if token:
                params["continue"] = token
            got = await self._call("GET", self._secrets(namespace), params=params) or {}
            items += cast(list[Secret], got.get("items") or [])
            meta = got.get("metadata") or {}
            token = meta.get("continue") or ""
            if not token:
                return items, str(meta.get("resourceVersion", ""))

    async def list_objects(self, path: str) -> list[dict[str, Any]]:
        """Every object of a collection (``/api/v1/nodes``, ``/apis/apps/v1/deployments``),
        following ``continue``."""
        items: list[dict[str, Any]] = []
        token = ""
        while True:
            params = {"limit": "500"}
            if token:
                params["continue"] = token
            got = await self._call("GET", path, params=params) or {}
            items += [i for i in got.get("items") or [] if isinstance(i, dict)]
            token = (got.get("metadata") or {}).get("continue") or ""
            if not token:
                return items

    async def create_event(self, namespace: str, body: dict[str, Any]) -> None:
        await self._call("POST", f"/api/v1/namespaces/{quote(namespace)}/events", body=body)

    async def watch_secrets(
        self, resource_version: str, *, field_selector: str = "", timeout_seconds: int = 300
    ) -> AsyncIterator[WatchEvent]:
        """Events after ``resource_version`` until the server ends the watch.

        A ``410 Gone`` (too old a version) arrives as an ``ERROR`` event or status;
        both raise ``KubeApiError(status=410)`` so the caller lists again.
        """
        if self._session is None:
            raise KubeApiError("client is not open")
        params = {
            "watch": "1",
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(timeout_seconds),
        }
        if field_selector:
            params["fieldSelector"] = field_selector
        try:
            async with self._session.get(
                self.server + self._secrets(None),
                params=params,
                headers=self._headers(),
                ssl=self._ssl,
                timeout=aiohttp.ClientTimeout(total=None, sock_read=timeout_seconds + 30),
            ) as resp:
                if resp.status >= 400:
                    text = await resp.text()
                    raise KubeApiError(
                        f"watch secrets: {resp.status} {_status_message(text)}", status=resp.status
                    )
                async for line in resp.content:
                    if not line.strip():
                        continue
                    event = cast(WatchEvent, json.loads(line))
                    if event.get("type") == "ERROR":
                        status = event.get("object") or {}
                        raise KubeApiError(
                            f"watch secrets: {status.get('message', 'error')}",
                            status=int(status.get("code", 0) or 0),
                        )
                    yield event
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise KubeApiError(f"watch secrets: {exc or type(exc).__name__}") from exc


def _status_message(text: str) -> str:
    try:
        doc = json.loads(text)
    except ValueError:
        return text[:200]
    if isinstance(doc, dict) and isinstance(doc.get("message"), str):
        return str(doc["message"])
    return text[:200]
