"""``/healthz`` and ``/readyz`` on the agent's mirror port, answered by the event loop.

The kubelet's probes are what restart a hung agent and what tell an operator that an
agent cannot reach its roots, so both are HTTP answered by the same event loop that
serves the mirror: a stopped or wedged process accepts TCP connections (the kernel
completes the handshake) but answers nothing, which a TCP probe cannot tell from a
healthy one.

- ``GET /healthz``: ``200 ok`` whenever the loop runs (liveness, startup).
- ``GET /readyz``: ``200`` when the roots are usable (``RootWatch.ready``), else
  ``503``; the body has one line per root either way.
"""

from __future__ import annotations

from aiohttp import web

from shoal.agent.roots import RootWatch


def health_routes(watch: RootWatch | None) -> list[web.RouteDef]:
    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        if watch is None:
            return web.Response(text="ready: no roots configured (no swarm)\n")
        lines = "".join(f"{line}\n" for line in watch.summary())
        if watch.ready:
            return web.Response(text=f"ready\n{lines}")
        return web.Response(status=503, text=f"not ready: {watch.why_not_ready()}\n{lines}")

    return [web.get("/healthz", healthz), web.get("/readyz", readyz)]
