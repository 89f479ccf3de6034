"""``shoal root``: run a root (seed and scheduler) until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio

from shoal.config import Config
from shoal.lifecycle import serve_until_signalled
from shoal.root.service import Root


def run_root(config: Config) -> int:
    asyncio.run(serve_until_signalled(lambda: Root(config)))
    return 0
