"""A TCP forwarder with one shared byte budget: a slow link in front of a local server.

On one machine without network namespaces, this is how the demo gives the origin the
egress of a busy registry: every byte from the origin to any client passes one token
bucket, so N clients pulling at once share the rate, as on a real saturated uplink.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Self

CHUNK = 64 << 10


class TokenBucket:
    def __init__(self, rate: float, burst: float | None = None) -> None:
        self.rate = rate
        self.burst = burst if burst is not None else max(rate / 20, CHUNK)
        self._tokens = self.burst
        self._last = 0.0
        self._lock = asyncio.Lock()

    async def take(self, n: int) -> None:
        if self.rate <= 0:
            return
        async with self._lock:
            loop = asyncio.get_running_loop()
            now = loop.time()
            if self._last:
                self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now
            self._tokens -= n
            if self._tokens < 0:
                await asyncio.sleep(-self._tokens / self.rate)


class Forwarder:
    """``async with Forwarder(host, port) as fwd:`` listens on ``fwd.port`` and relays
    every connection to ``host:port``; subclasses shape the answers in ``_down``. A
    ``ConnectionAbortedError`` out of ``_down`` resets both sides (a cut network)."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except (OSError, asyncio.CancelledError) as exc:
            writer.close()
            self._tasks.discard(task)
            if isinstance(exc, asyncio.CancelledError):
                raise  # ``__aexit__`` while connecting
            return
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._down(up_reader, writer))
        except ConnectionAbortedError:
            for w in (writer, up_writer):
                w.transport.abort()
        finally:
            # both closed before either is waited on: a cancel during the first wait
            # (``__aexit__``) left the second open, a socket the garbage collector
            # then found after the loop had closed
            for w in (writer, up_writer):
                w.close()
            self._tasks.discard(task)
            await asyncio.gather(
                *(w.wait_closed() for w in (writer, up_writer)), return_exceptions=True
            )

    async def _down(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """The target's answers to the client; as they come by default."""
        await self._pipe(reader, writer)

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        before: Callable[[int], Awaitable[None]] | None = None,
    ) -> None:
        """Copy ``reader`` to ``writer`` until EOF; ``before(n)`` is awaited ahead of
        each chunk of ``n`` bytes (a throttle's bucket)."""
        try:
            while data := await reader.read(CHUNK):
                if before is not None:
                    await before(len(data))
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(OSError, RuntimeError):
                writer.write_eof()


class ThrottledForwarder(Forwarder):
    """``async with ThrottledForwarder(host, port, rate) as fwd:`` listens on ``fwd.port``;
    every answer byte to any client passes one token bucket."""

    def __init__(self, target_host: str, target_port: int, rate_bytes: float) -> None:
        super().__init__(target_host, target_port)
        self.bucket = TokenBucket(rate_bytes)
        self.bytes_down = 0

    async def _down(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._pipe(reader, writer, self._meter)

    async def _meter(self, n: int) -> None:
        await self.bucket.take(n)
        self.bytes_down += n
