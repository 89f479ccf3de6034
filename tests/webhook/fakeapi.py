"""A small stand-in for kube-apiserver's Secret endpoints, served for real on loopback.

No API server can be installed here, so the client and controller are tested against
this: real HTTP, the API's URL layout, its JSON shapes (``Status`` errors, list
``metadata.resourceVersion``, watch events as JSON lines) and its semantics that the
controller relies on (409 on create of an existing name and on a stale
``resourceVersion``, server-assigned ``uid`` and ``resourceVersion``). Every request is
recorded so tests can check what was called and in what order.
"""

from __future__ import annotations

import asyncio
import copy
import json
import uuid
from typing import Any

from aiohttp import web


def status(code: int, reason: str, message: str) -> web.Response:
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    return web.json_response(body, status=code)


class FakeApi:
    def __init__(self) -> None:
        self.secrets: dict[tuple[str, str], dict[str, Any]] = {}
        self.requests: list[tuple[str, str]] = []
        self.authorization: set[str] = set()
        self.events: list[tuple[int, str, dict[str, Any]]] = []
        self.rv = 1000
        self.fail_with: int | None = None
        self.delay = 0.0
        self._changed = asyncio.Condition()
        self.port = 0
        self.closing = False
        self._runner: web.AppRunner | None = None

    # -- state ------------------------------------------------------------------
    async def put(self, secret: dict[str, Any], kind: str = "ADDED") -> dict[str, Any]:
        self.rv += 1
        obj = copy.deepcopy(secret)
        meta = obj.setdefault("metadata", {})
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", "2026-11-27T10:00:00Z")
        meta["resourceVersion"] = str(self.rv)
        self.secrets[(meta["namespace"], meta["name"])] = obj
        await self._event(kind, obj)
        return obj

    async def remove(self, namespace: str, name: str) -> dict[str, Any] | None:
        obj = self.secrets.pop((namespace, name), None)
        if obj is not None:
            self.rv += 1
            await self._event("DELETED", obj)
            # the garbage collector: dependents of a deleted owner go too
            uid = obj["metadata"]["uid"]
            for key, dep in list(self.secrets.items()):
                owners = dep["metadata"].get("ownerReferences") or []
                if any(o.get("uid") == uid for o in owners):
                    await self.remove(*key)
        return obj

    async def _event(self, kind: str, obj: dict[str, Any]) -> None:
        async with self._changed:
            self.events.append((self.rv, kind, copy.deepcopy(obj)))
            self._changed.notify_all()

    # -- server -----------------------------------------------------------------
    async def __aenter__(self) -> FakeApi:
        app = web.Application(middlewares=[self._record])
        app.router.add_get("/api/v1/secrets", self._list_all)
        app.router.add_get("/api/v1/namespaces/{ns}/secrets", self._list_ns)
        app.router.add_post("/api/v1/namespaces/{ns}/secrets", self._create)
        app.router.add_get("/api/v1/namespaces/{ns}/secrets/{name}", self._get)
        app.router.add_put("/api/v1/namespaces/{ns}/secrets/{name}", self._replace)
        app.router.add_delete("/api/v1/namespaces/{ns}/secrets/{name}", self._delete)
        app.router.add_post("/api/v1/namespaces", self._namespace)
        app.router.add_delete("/api/v1/namespaces/{ns}", self._namespace)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.closing = True
        async with self._changed:
            self._changed.notify_all()  # ends open watches
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append((request.method, request.path_qs))
        self.authorization.add(request.headers.get("Authorization", ""))
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail_with is not None:
            return status(self.fail_with, "InternalError", "injected failure")
        resp: web.StreamResponse = await handler(request)
        return resp

    def _matches(self, obj: dict[str, Any], request: web.Request) -> bool:
        labels = obj["metadata"].get("labels") or {}
        for term in filter(None, request.query.get("labelSelector", "").split(",")):
            k, _, v = term.partition("=")
            if labels.get(k) != v:
                return False
        for term in filter(None, request.query.get("fieldSelector", "").split(",")):
            k, _, v = term.partition("=")
            if k == "type" and obj.get("type") != v:
                return False
        return True

    async def _list(self, request: web.Request, namespace: str | None) -> web.StreamResponse:
        if request.query.get("watch") in ("1", "true"):
            return await self._watch(request)
        items = [
            copy.deepcopy(o)
            for (ns, _), o in sorted(self.secrets.items())
            if (namespace is None or ns == namespace) and self._matches(o, request)
        ]
        return web.json_response(
            {
                "kind": "SecretList",
                "apiVersion": "v1",
                "metadata": {"resourceVersion": str(self.rv)},
                "items": items,
            }
        )

    async def _list_all(self, request: web.Request) -> web.StreamResponse:
        return await self._list(request, None)

    async def _list_ns(self, request: web.Request) -> web.StreamResponse:
        return await self._list(request, request.match_info["ns"])

    async def _watch(self, request: web.Request) -> web.StreamResponse:
        since = int(request.query.get("resourceVersion") or self.rv)
        timeout = float(request.query.get("timeoutSeconds", "30"))
        resp = web.StreamResponse()
        resp.content_type = "application/json"
        await resp.prepare(request)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        sent = since
        while loop.time() < deadline and not self.closing:
            for rv, kind, obj in list(self.events):
                if rv > sent and self._matches(obj, request):
                    line = json.dumps({"type": kind, "object": obj}) + "\n"
                    try:
                        await resp.write(line.encode())
                    except ConnectionResetError:  # the watcher went away
                        return resp
                if rv > sent:
                    sent = rv
            async with self._changed:
                try:
                    await asyncio.wait_for(self._changed.wait(), deadline - loop.time())
                except TimeoutError:
                    break
        await resp.write_eof()
        return resp

    async def _get(self, request: web.Request) -> web.Response:
        key = (request.match_info["ns"], request.match_info["name"])
        if key not in self.secrets:
            return status(404, "NotFound", f'secrets "{key[1]}" not found')
        return web.json_response(self.secrets[key])

    async def _create(self, request: web.Request) -> web.Response:
        body = await request.json()
        ns = request.match_info["ns"]
        body["metadata"]["namespace"] = ns
        key = (ns, body["metadata"]["name"])
        if key in self.secrets:
            return status(409, "AlreadyExists", f'secrets "{key[1]}" already exists')
        if body["metadata"].get("resourceVersion"):
            return status(400, "BadRequest", "resourceVersion should not be set on create")
        return web.json_response(await self.put(body), status=201)

    async def _replace(self, request: web.Request) -> web.Response:
        body = await request.json()
        key = (request.match_info["ns"], request.match_info["name"])
        current = self.secrets.get(key)
        if current is None:
            return status(404, "NotFound", f'secrets "{key[1]}" not found')
        if body["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
            return status(409, "Conflict", "the object has been modified")
        body["metadata"]["uid"] = current["metadata"]["uid"]
        return web.json_response(await self.put(body, "MODIFIED"))

    async def _namespace(self, request: web.Request) -> web.Response:
        """Namespaces are accepted and forgotten: only Secrets are modelled."""
        return web.json_response({"kind": "Namespace", "apiVersion": "v1"}, status=201)

    async def _delete(self, request: web.Request) -> web.Response:
        key = (request.match_info["ns"], request.match_info["name"])
        if await self.remove(*key) is None:
            return status(404, "NotFound", f'secrets "{key[1]}" not found')
        return web.json_response({"kind": "Status", "apiVersion": "v1", "status": "Success"})
