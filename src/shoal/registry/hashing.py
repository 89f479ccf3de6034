"""Hashing off the event loop, where it is worth it.

The mirror's relay hashes each chunk in line (``DigestVerifier``). Handing every
chunk (a few hundred KiB) to a worker thread was tried and measured worse on this
2-core machine, where the registry, the agent and the client already keep both cores
busy: relaying 1 GiB cost the agent 1.98 s of CPU with the hand-offs against 1.42 s
in line, and the pull took 2.07x against 1.77x the direct pull
(bench/mirror_overhead.py, 2026-11-27). ``run_hash`` stays for whole-digest hashing
beside a piece pipeline (the origin fetch), where the other work is in threads too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

Buffer = bytes | bytearray | memoryview

_POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="shoal-hash")


async def run_hash(update: Callable[[Buffer], None], data: Buffer) -> None:
    """``update(data)`` on a hashing thread."""
    await asyncio.get_running_loop().run_in_executor(_POOL, update, data)
