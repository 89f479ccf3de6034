"""OCI error bodies and the relaying of upstream answers to the mirror's client."""

from __future__ import annotations

import json

import aiohttp
from aiohttp import web

from shoal.errors import ShoalError

API_VERSION_HEADER = {"Docker-Distribution-API-Version": "registry/2.0"}
#: upstream error bodies larger than this are cut (they are JSON error documents)
MAX_ERROR_BODY = 64 << 10


def oci_error(
    status: int, code: str, message: str, *, detail: object = None, head: bool = False
) -> web.Response:
    body = json.dumps({"errors": [{"code": code, "message": message, "detail": detail}]})
    return web.Response(
        status=status,
        body=None if head else body.encode(),
        content_type="application/json",
        headers=API_VERSION_HEADER,
    )


def error_response(exc: ShoalError, *, head: bool = False) -> web.Response:
    resp = oci_error(exc.http_status, exc.oci_code, exc.message, detail=exc.detail, head=head)
    challenge = getattr(exc, "challenge", None)
    if isinstance(challenge, str):
        resp.headers["WWW-Authenticate"] = challenge  # an upstream's refusal, passed back
    return resp


async def relay_upstream_error(resp: aiohttp.ClientResponse, *, head: bool) -> web.Response:
    """Pass a 4xx answer back as the upstream gave it (401 keeps its challenge).

    A 5xx becomes the mirror's own 502: the client should see that the registry behind
    the mirror failed, not mistake it for the mirror failing.
    """
    if resp.status >= 500:
        return oci_error(502, "UNAVAILABLE", f"upstream answered HTTP {resp.status}", head=head)
    headers = dict(API_VERSION_HEADER)
    for name in ("WWW-Authenticate", "Content-Range", "Retry-After"):
        if name in resp.headers:
            headers[name] = resp.headers[name]
    body = b"" if head else await resp.content.read(MAX_ERROR_BODY)
    content_type = resp.headers.get("Content-Type", "application/json")
    if not head and (not body or "json" not in content_type):
        body = json.dumps(
            {
                "errors": [
                    {
                        "code": _code_for(resp.status),
                        "message": body.decode(errors="replace").strip() or resp.reason or "",
                    }
                ]
            }
        ).encode()
        content_type = "application/json"
    headers["Content-Type"] = content_type
    return web.Response(status=resp.status, body=body or None, headers=headers)


def _code_for(status: int) -> str:
    return {
        401: "UNAUTHORIZED",
        403: "DENIED",
        404: "NAME_UNKNOWN",
        416: "RANGE_INVALID",
        429: "TOOMANYREQUESTS",
    }.get(status, "UNKNOWN")
