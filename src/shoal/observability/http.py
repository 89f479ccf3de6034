"""What an aiohttp server of shoal's needs from observability: request ids and timings.

``request_context`` is a middleware: it gives each request an id (the client's
``X-Request-Id`` when it sent a sane one, else a new one), sets it for the logs
(``logs.request_id``) and sends it back in the answer's ``X-Request-Id``, and notes when
the request arrived. ``mark_first_byte`` goes on the application's
``on_response_prepare`` signal: it runs when the answer's headers are written, which is
the first byte the client sees, so time to first byte is measured where it happens
rather than guessed from inside a handler.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from shoal.observability.logs import new_request_id, request_id

REQUEST_ID_HEADER = "X-Request-Id"
#: ``time.perf_counter()`` when the request reached the middleware
STARTED = web.RequestKey("shoal_started", float)
#: seconds from ``STARTED`` to the response's headers
FIRST_BYTE = web.RequestKey("shoal_first_byte", float)
#: the request's id (also in ``logs.request_id`` while its handler runs)
REQUEST_ID = web.RequestKey("shoal_request_id", str)

_SANE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    request[STARTED] = time.perf_counter()
    given = request.headers.get(REQUEST_ID_HEADER, "")
    rid = given if _SANE_ID.match(given) else new_request_id()
    request[REQUEST_ID] = rid
    token = request_id.set(rid)
    try:
        return await handler(request)
    finally:
        request_id.reset(token)


async def mark_first_byte(request: web.Request, response: web.StreamResponse) -> None:
    started = request.get(STARTED)
    if started is not None:
        request[FIRST_BYTE] = time.perf_counter() - started
    # a plain Response is prepared after the middleware returned: read the request's
    rid = request.get(REQUEST_ID)
    if rid and REQUEST_ID_HEADER not in response.headers:
        response.headers[REQUEST_ID_HEADER] = rid


def elapsed(request: web.Request) -> float:
    """Seconds since the request arrived (0 when ``request_context`` did not see it)."""
    started = request.get(STARTED)
    return time.perf_counter() - started if started is not None else 0.0
