"""A started service settles the garbage collector (``shoal.lifecycle.settle_collector``)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
from collections.abc import AsyncIterator

from shoal.lifecycle import GC_YOUNG, serve_until_signalled


def test_a_running_service_collects_young_objects_in_larger_batches() -> None:
    before = gc.get_threshold()
    seen: list[tuple[int, int, int]] = []
    frozen: list[int] = []

    @contextlib.asynccontextmanager
    async def service() -> AsyncIterator[object]:
        async def stop_soon() -> None:
            await asyncio.sleep(0)  # after the service has started
            seen.append(gc.get_threshold())
            frozen.append(gc.get_freeze_count())
            os.kill(os.getpid(), signal.SIGTERM)

        task = asyncio.ensure_future(stop_soon())
        yield object()
        await task

    try:
        asyncio.run(serve_until_signalled(service))
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
    assert seen == [(GC_YOUNG, before[1], before[2])]
    assert frozen[0] > 0  # what the process built before is out of the collector's view
