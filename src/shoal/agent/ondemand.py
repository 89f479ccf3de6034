"""On-demand loading: only the pieces a byte range needs, for overlaybd's lazy reads.

A container started from a lazily loaded image reads a few ranges of a few layers; a
node that fetched whole blobs for that would defeat the purpose. A ``RangeFetch`` joins
the blob's swarm like a full download (same root, same hashes, same verification) but
asks for the covering pieces only, each of the parents that hold it first, then those
fetching it, then the seed; pieces already in the store are not asked again.
"""

from __future__ import annotations

import asyncio

from shoal.agent.swarm import Download, SwarmProvider
from shoal.cache.blob import BlobInfo
from shoal.control.schema import BlobState
from shoal.errors import UpstreamUnavailableError
from shoal.oci.digest import Digest
from shoal.oci.range import ByteRange
from shoal.registry.origin_fetch import Source
from shoal.swarm import ParentOffer

#: pieces of one range fetched at once
PARALLEL = 4


class PieceUnavailableError(UpstreamUnavailableError):
    """No parent, nor the seed, could supply a piece of the range."""


class RangeFetch(Download):
    def __init__(
        self, provider: SwarmProvider, digest: Digest, source: Source, byte_range: ByteRange
    ) -> None:
        super().__init__(provider, digest, source)
        self.byte_range = byte_range

    async def _fetch_pieces(self, state: BlobState, info: BlobInfo) -> None:
        """Only the pieces the range covers that are not here yet."""
        first, last = self.byte_range.resolve(info.size)
        wanted = range(first // info.piece_size, last // info.piece_size + 1)
        offers = [o.offer() for o in state.parents]
        limit = asyncio.Semaphore(PARALLEL)

        async def one(index: int) -> None:
            async with limit:
                for parent in _candidates(offers, index, state.seed):
                    if await self.fetch_piece(parent, index, info) is None:
                        return
                raise PieceUnavailableError(f"{self.key}: no peer could supply piece {index}")

        await asyncio.gather(*(one(i) for i in wanted if not info.has(i)))
        await self.p.flush(self.root)

    def store_has_blob(self) -> bool:
        return False  # a partial blob is the point: keep what was fetched


def _candidates(offers: list[ParentOffer], index: int, seed: str) -> list[str]:
    bit = 1 << index
    holders = [o.peer for o in offers if o.have & o.only & bit]
    fetching = [o.peer for o in offers if o.fetching & o.only & bit]
    ordered = [*holders, *fetching, seed]
    return list(dict.fromkeys(p for p in ordered if p))
