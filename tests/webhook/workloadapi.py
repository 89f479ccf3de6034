"""``fakeapi.FakeApi`` plus what the workload preheater reads and writes: nodes,
namespaces, Deployments, StatefulSets and DaemonSets (lists, the API's shapes) and
Events (created, recorded). Real HTTP on loopback, as for the Secret tests."""

from __future__ import annotations

import copy
from typing import Any

from aiohttp import web

from tests.webhook.fakeapi import FakeApi, status

Obj = dict[str, Any]
LISTS = {
    "/api/v1/nodes": "NodeList",
    "/api/v1/namespaces": "NamespaceList",
    "/apis/apps/v1/deployments": "DeploymentList",
    "/apis/apps/v1/statefulsets": "StatefulSetList",
    "/apis/apps/v1/daemonsets": "DaemonSetList",
}


class WorkloadApi(FakeApi):
    def __init__(self) -> None:
        super().__init__()
        #: list path -> objects by (namespace, name)
        self.objects: dict[str, dict[tuple[str, str], Obj]] = {p: {} for p in LISTS}
        self.created_events: list[Obj] = []

    def set(self, path: str, obj: Obj) -> None:
        meta = obj["metadata"]
        self.rv += 1
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = str(self.rv)
        self.objects[path][(meta.get("namespace", ""), meta["name"])] = obj

    async def __aenter__(self) -> WorkloadApi:
        app = web.Application(middlewares=[self._record])
        app.router.add_get("/api/v1/namespaces/{ns}/secrets/{name}", self._get)
        for path in LISTS:
            app.router.add_get(path, self._list_of)
        app.router.add_post("/api/v1/namespaces/{ns}/events", self._create_event)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def _list_of(self, request: web.Request) -> web.Response:
        path = request.path
        items = [copy.deepcopy(o) for _, o in sorted(self.objects[path].items())]
        return web.json_response(
            {
                "kind": LISTS[path],
                "apiVersion": "apps/v1" if "/apps/" in path else "v1",
                "metadata": {"resourceVersion": str(self.rv)},
                "items": items,
            }
        )

    async def _create_event(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("metadata", {}).get("namespace") != request.match_info["ns"]:
            return status(400, "BadRequest", "the namespace of the provided object does not match")
        if not body.get("involvedObject", {}).get("uid"):
            return status(422, "Invalid", "involvedObject.uid: Required value")
        self.created_events.append(body)
        return web.json_response(body, status=201)
