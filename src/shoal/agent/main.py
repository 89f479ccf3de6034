"""``shoal agent``: run the node agent until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio

from shoal.agent.service import Agent
from shoal.config import Config
from shoal.lifecycle import serve_until_signalled


def run_agent(config: Config) -> int:
    # the stock loop, not uvloop: the peer server needs loop.sendfile, which uvloop lacks,
    # and uvloop measured no faster on the mirror path (bench/mirror_overhead.py)
    asyncio.run(serve_until_signalled(lambda: Agent(config)))
    return 0
