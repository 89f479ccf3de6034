"""A TCP forwarder in front of the origin that can cut a connection mid-body.

The fault it makes is the one a real network makes: the origin's connection to the
agent goes away (both directions closed at once) after some bytes of an answer.
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType

CHUNK = 64 << 10


class CuttingForwarder:
    """``async with CuttingForwarder(host, port) as fwd:`` listens on ``fwd.port``;
    ``fwd.cut_after(n)`` aborts the first connection whose answers pass ``n`` bytes."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.cuts = 0
        self._limit: int | None = None
        self._how = "reset"
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def cut_after(self, nbytes: int, how: str = "reset") -> None:
        """``reset``: both sides aborted; ``close``: a FIN to the agent; ``stall``: the
        bytes stop, the connection stays open (a partition)."""
        self._limit = nbytes
        self._how = how

    async def __aenter__(self) -> CuttingForwarder:
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
        except OSError:
            writer.close()
            self._tasks.discard(task)
            return
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._down(up_reader, writer))
        except ConnectionAbortedError:
            for w in (writer, up_writer):
                w.transport.abort()
        finally:
            for w in (writer, up_writer):
                w.close()
                with contextlib.suppress(OSError):
                    await w.wait_closed()
            self._tasks.discard(task)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(CHUNK):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(OSError, RuntimeError):
                writer.write_eof()

    async def _down(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        passed = 0
        while data := await reader.read(CHUNK):
            if self._limit is not None and passed + len(data) > self._limit:
                writer.write(data[: self._limit - passed])
                await writer.drain()
                self._limit = None
                self.cuts += 1
                if self._how == "stall":
                    await asyncio.sleep(3600)
                if self._how == "close":
                    writer.close()
                    return
                raise ConnectionAbortedError("cut")
            passed += len(data)
            writer.write(data)
            await writer.drain()
        with contextlib.suppress(OSError, RuntimeError):
            writer.write_eof()
