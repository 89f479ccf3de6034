"""The ``/metrics`` endpoint, standalone or mounted on the proxy's app."""

from __future__ import annotations

from aiohttp import web

from shoal.observability.metrics import Metrics

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def metrics_handler(metrics: Metrics) -> web.RouteDef:
    async def handle(_: web.Request) -> web.Response:
        return web.Response(body=metrics.render().encode(), headers={"Content-Type": CONTENT_TYPE})

    return web.get("/metrics", handle)


def exporter_app(metrics: Metrics) -> web.Application:
    app = web.Application()
    app.add_routes([metrics_handler(metrics)])
    return app
