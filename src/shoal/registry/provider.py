"""Where the mirror gets a blob it does not relay: something that fills the piece store.

The mirror asks a ``BlobProvider`` to make sure a download of the blob is under way (or
done) and then streams from the store as pieces land. Without roots, the provider is
the agent itself fetching from the origin (``OriginProvider``); with roots, it is the
swarm, which falls back to the origin when no root answers.
"""

from __future__ import annotations

from typing import Protocol

from shoal.cache.blob import BlobInfo
from shoal.cache.store import PieceStore
from shoal.oci.digest import Digest
from shoal.oci.range import ByteRange
from shoal.registry.origin_fetch import OriginFetcher, Source


class BlobProvider(Protocol):
    store: PieceStore

    async def ensure(self, digest: Digest, source: Source) -> BlobInfo:
        """Start or join the blob's download; return its geometry once known."""
        ...

    async def ensure_range(self, digest: Digest, source: Source, byte_range: ByteRange) -> BlobInfo:
        """Make sure the pieces of ``byte_range`` come (on-demand); geometry once known."""
        ...

    def prefetch(self, blobs: list[tuple[Digest, int]], source: Source) -> int:
        """Start downloads of the blobs (digest, size from the manifest) an image
        manifest just served names, without waiting; how many were started."""
        ...


class OriginProvider:
    """The agent fetches from the origin itself, once per blob, into its store."""

    def __init__(self, store: PieceStore, fetcher: OriginFetcher) -> None:
        self.store = store
        self.fetcher = fetcher

    def __repr__(self) -> str:
        return f"<OriginProvider {self.fetcher!r}>"

    async def ensure(self, digest: Digest, source: Source) -> BlobInfo:
        info, _ = await self.fetcher.start(digest, source)
        return info

    async def ensure_range(self, digest: Digest, source: Source, byte_range: ByteRange) -> BlobInfo:
        return await self.ensure(digest, source)  # one stream from the origin: all of it

    def prefetch(self, blobs: list[tuple[Digest, int]], source: Source) -> int:
        return 0  # without a swarm every prefetch is another read of the origin

    def fetch_checks_access(self, digest: Digest) -> bool:
        """Whether ``ensure(digest, source)`` now sends a GET with ``source``'s own
        credentials (nothing stored, nothing in flight): its answer is then that
        client's access check, and the mirror sends no HEAD of its own."""
        return self.fetcher.access is not None and self.fetcher.would_fetch(str(digest))
