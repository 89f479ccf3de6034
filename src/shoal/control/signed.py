"""A kept-alive HTTP(S) session to the roots whose every call is signed.

The agents' control client and the operator's preheat client talk to the same roots
with the same signature (``auth.sign`` over method, path, body and time) and the same
TLS settings; they differ in the secret, the limits and how they read an answer, so
this module holds only the plumbing: the session, and one signed call that gives back
the status and the body. Transport failures (``aiohttp.ClientError``, ``TimeoutError``,
``OSError``) pass through for each client to name in its own error.
"""

from __future__ import annotations

import time

import aiohttp

from shoal.config import ControlConfig
from shoal.control.auth import HEADER, sign
from shoal.control.tls import client_context


class SignedSession:
    def __init__(
        self,
        secret: bytes,
        control: ControlConfig | None,
        *,
        timeout: float,
        connect_timeout: float,
        per_root: int,
    ) -> None:
        self._secret = secret
        tls = client_context(control or ControlConfig())
        self.scheme = "https" if tls is not None else "http"
        self.session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(
                total=timeout, sock_connect=min(timeout, connect_timeout)
            ),
            connector=aiohttp.TCPConnector(
                limit_per_host=per_root, ssl=tls if tls is not None else False
            ),
        )

    def __repr__(self) -> str:
        return f"<SignedSession {self.scheme}>"

    async def call(
        self, root: str, method: str, path: str, body: bytes | None, *, held: float = 0.0
    ) -> tuple[int, bytes]:
        """``method path`` at ``root``, signed; (status, body). ``body`` None: none sent.
        ``held``: seconds the root may hold this call (a watch) on top of the timeout."""
        headers = {
            HEADER: sign(self._secret, method, path, body or b"", time.time()),
            "Content-Type": "application/json",
        }
        timeout = self.session.timeout
        if held > 0 and timeout.total is not None:
            timeout = aiohttp.ClientTimeout(
                total=timeout.total + held, sock_connect=timeout.sock_connect
            )
        async with self.session.request(
            method, f"{self.scheme}://{root}{path}", data=body, headers=headers, timeout=timeout
        ) as resp:
            return resp.status, await resp.read()

    async def close(self) -> None:
        await self.session.close()
