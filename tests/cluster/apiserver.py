"""The stand-in API server of the chart cluster: Secrets, webhook configurations, and
what the workload preheater reads and writes.

No kube-apiserver can be installed here. The cluster needs what shoal's own programs
call through it: Secrets (the webhook's pull-secret clones, the bootstrap Job's
secrets, a workload's pull secrets), one ``MutatingWebhookConfiguration`` (the
bootstrap Job writes its ``caBundle``), and for the preheater the lists of nodes,
namespaces, Deployments, StatefulSets and DaemonSets and the Events it creates.
``tests/webhook/fakeapi.py`` models Secrets with the API's URL layout, JSON shapes and
conflict semantics, and ``tests/webhook/workloadapi.py`` the preheater's lists and
Events; this adds HTTPS with a CA the Pods are given (as the API server's ``ca.crt``
in every service-account volume), bearer tokens (each Pod gets its own, and the API
records who called), webhook configurations patched with RFC 6902 JSON Patch as the
API server applies them, and, when given the rendered RBAC (``rbac.py``), a ``403``
for every call no rule bound to the caller grants (recorded in ``denied``).
"""

from __future__ import annotations

import copy
import ssl
from typing import Any

import jsonpatch
from aiohttp import web

from tests.cluster.rbac import Authorizer, request_info
from tests.webhook.fakeapi import status
from tests.webhook.workloadapi import LISTS, WorkloadApi

MWC = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"


class ApiServer(WorkloadApi):
    def __init__(
        self, host: str, ssl_context: ssl.SSLContext, authorizer: Authorizer | None = None
    ) -> None:
        super().__init__()
        self.authorizer = authorizer
        #: (service account, method, path) of every call RBAC refused
        self.denied: list[tuple[str, str, str]] = []
        self.host = host
        self._ssl_context = ssl_context
        self.webhooks: dict[str, dict[str, Any]] = {}
        #: bearer token -> the service account it stands for
        self.tokens: dict[str, str] = {}
        #: (service account, method, path) of every authenticated call
        self.calls: list[tuple[str, str, str]] = []

    async def __aenter__(self) -> ApiServer:
        app = web.Application(middlewares=[self._authenticate, self._record])
        app.router.add_get("/api/v1/secrets", self._list_all)
        app.router.add_get("/api/v1/namespaces/{ns}/secrets", self._list_ns)
        app.router.add_post("/api/v1/namespaces/{ns}/secrets", self._create)
        app.router.add_get("/api/v1/namespaces/{ns}/secrets/{name}", self._get)
        app.router.add_put("/api/v1/namespaces/{ns}/secrets/{name}", self._replace)
        app.router.add_delete("/api/v1/namespaces/{ns}/secrets/{name}", self._delete)
        app.router.add_get(MWC + "/{name}", self._get_mwc)
        app.router.add_patch(MWC + "/{name}", self._patch_mwc)
        for path in LISTS:
            app.router.add_get(path, self._list_of)
        app.router.add_post("/api/v1/namespaces/{ns}/events", self._create_event)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0, ssl_context=self._ssl_context)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        return self

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    @web.middleware
    async def _authenticate(self, request: web.Request, handler: Any) -> web.StreamResponse:
        auth = request.headers.get("Authorization", "")
        who = self.tokens.get(auth.removeprefix("Bearer "))
        if who is None:
            return status(401, "Unauthorized", "no valid bearer token")
        self.calls.append((who, request.method, request.path))
        if self.authorizer is not None:
            req = request_info(request.method, request.path, request.query)
            if not self.authorizer.allows(who, req):
                self.denied.append((who, request.method, request.path))
                sa_ns, _, sa = who.partition(":")
                return status(
                    403, "Forbidden",
                    f'{req.resource} is forbidden: User "system:serviceaccount:{sa_ns}:{sa}" '
                    f'cannot {req.verb} resource "{req.resource}" in API group "{req.group}"',
                )  # fmt: skip
        resp: web.StreamResponse = await handler(request)
        return resp

    async def _watch(self, request: web.Request) -> web.StreamResponse:
        """A watcher that went away (a Pod killed mid-watch) ends its watch quietly."""
        try:
            return await super()._watch(request)
        except ConnectionResetError:
            return web.Response(status=499)

    async def _get_mwc(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in self.webhooks:
            return status(404, "NotFound", f'mutatingwebhookconfigurations "{name}" not found')
        return web.json_response(self.webhooks[name])

    async def _patch_mwc(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in self.webhooks:
            return status(404, "NotFound", f'mutatingwebhookconfigurations "{name}" not found')
        if request.content_type != "application/json-patch+json":
            return status(415, "UnsupportedMediaType", request.content_type)
        try:
            patched = jsonpatch.apply_patch(self.webhooks[name], await request.json())
        except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
            return status(422, "Invalid", str(exc))
        self.webhooks[name] = patched
        return web.json_response(patched)

    def apply(self, doc: dict[str, Any]) -> None:
        """A rendered object, as ``kubectl apply`` would store it."""
        if doc["kind"] == "MutatingWebhookConfiguration":
            self.webhooks[doc["metadata"]["name"]] = copy.deepcopy(doc)
        elif doc["kind"] == "Secret":
            meta = doc["metadata"]
            self.secrets[(meta["namespace"], meta["name"])] = copy.deepcopy(doc)
