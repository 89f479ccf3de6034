"""A TCP forwarder in front of the origin that can cut a connection mid-body.

The fault it makes is the one a real network makes: the origin's connection to the
agent goes away (both directions closed at once) after some bytes of an answer.
"""

from __future__ import annotations

import asyncio
import contextlib

from shoal.lab.throttle import CHUNK, Forwarder


class CuttingForwarder(Forwarder):
    """``async with CuttingForwarder(host, port) as fwd:`` listens on ``fwd.port``;
    ``fwd.cut_after(n)`` aborts the first connection whose answers pass ``n`` bytes."""

    def __init__(self, target_host: str, target_port: int) -> None:
        super().__init__(target_host, target_port)
        self.cuts = 0
        self._limit: int | None = None
        self._how = "reset"

    def cut_after(self, nbytes: int, how: str = "reset") -> None:
        """``reset``: both sides aborted; ``close``: a FIN to the agent; ``stall``: the
        bytes stop, the connection stays open (a partition)."""
        self._limit = nbytes
        self._how = how

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
