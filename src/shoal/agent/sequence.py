"""A preheat job's blobs in order, each starting once a share of the one before is stored.

All at once, every blob's stripe trees share every link (4 layers, 4 stripes: 16 flows
on a node's downlink) and the root fetches every blob from the origin at once. In
order, the root fetches them nearly one after another (it opens a blob when the first
agent joins it) and fewer trees share the links at the end. The overlap keeps the
origin's link busy: at a quarter of a blob the first agent is a piece or two behind
the root; at half, the root had finished the blob and the origin's link idled 0.1-1.3 s
before each next one (1 MiB pieces at 25 Mbit/s).

Measured (16 nodes at 25 Mbit/s, 4 x 16 MiB, two runs each, docs/preheat.md): a
preheat in order 32.27 and 30.89 s, all at once 33.46 and 34.26 s. A pull does not do
this: a prefetch that held back the later layers (the runtime's requests for them
waiting their turn) measured no faster (32.17 and 31.78 s against 32.45 and 31.79 s),
and ``shoal sim --lookahead 0.25`` agrees (30.98 against 30.87 s).

``StoreProgress`` is a listener on the piece store that wakes whoever waits for a share
of a blob (``agent.preheat``).
"""

from __future__ import annotations

import asyncio
from typing import Any

from shoal.cache.store import PieceStore

#: a blob's next one starts once this share of it is stored here (or its download ended)
LOOKAHEAD = 0.25


class StoreProgress:
    def __init__(self, store: PieceStore) -> None:
        self.store = store
        self._waiting: dict[str, list[asyncio.Event]] = {}
        store.add_listener(self._stored)

    def __repr__(self) -> str:
        return f"<StoreProgress [{sum(map(len, self._waiting.values()))} waiting]>"

    def _stored(self, digest: str, _index: int) -> None:
        for wake in self._waiting.get(digest, ()):
            wake.set()

    def stored_share(self, digest: str) -> float:
        info = self.store.lookup(digest)
        if info is None or not info.piece_count:
            return 0.0
        return info.present_count / info.piece_count

    async def until_share(
        self, digest: str, ended: asyncio.Future[Any], share: float = LOOKAHEAD
    ) -> None:
        """Until ``share`` of the blob is stored here or ``ended`` is done."""
        wake = asyncio.Event()
        self._waiting.setdefault(digest, []).append(wake)
        try:
            while not ended.done() and self.stored_share(digest) < share:
                wake.clear()
                waiter = asyncio.ensure_future(wake.wait())
                try:
                    await asyncio.wait((waiter, ended), return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waiter.cancel()
        finally:
            self._waiting[digest].remove(wake)
            if not self._waiting[digest]:
                del self._waiting[digest]
