"""Fetch only the missing pieces of a blob from its origin, with ``Range`` requests.

When a blob's roots are all gone mid-download, the agent holds most of the blob already
(verified against the root's piece hashes); reading the whole blob again from the origin
would cost the origin a copy per agent. Instead each run of missing pieces is one ranged
GET. A piece whose hash the root had said is checked against it before it is stored;
the rest are stored unchecked and the whole digest is checked when the blob is sealed
(``PieceStore.finish(verify=True)``), so nothing unverified is ever served as whole.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from shoal.cache.store import PieceStore
from shoal.errors import UpstreamUnavailableError
from shoal.oci.digest import Digest
from shoal.registry.origin_fetch import Source, UpstreamRefusedError
from shoal.registry.upstream import UpstreamClient

log = logging.getLogger(__name__)


def runs(indices: Sequence[int]) -> list[tuple[int, int]]:
    """Consecutive indices as ``(first, last)`` runs, in order."""
    out: list[tuple[int, int]] = []
    for i in sorted(indices):
        if out and out[-1][1] == i - 1:
            out[-1] = (out[-1][0], i)
        else:
            out.append((i, i))
    return out


async def fetch_pieces(
    upstream: UpstreamClient,
    store: PieceStore,
    digest: Digest,
    source: Source,
    pieces: Sequence[int],
    hashes: Sequence[bytes | None],
) -> int:
    """Store ``pieces`` of ``digest`` (already created in ``store``) from the origin;
    return the bytes read. Raises ``UpstreamUnavailableError`` (or the origin's refusal)."""
    key = str(digest)
    info = store.lookup(key)
    if info is None:
        raise UpstreamUnavailableError(f"{key}: not in the store")
    path = f"/v2/{source.name}/blobs/{digest}"
    total = 0
    for first, last in runs([i for i in pieces if not info.has(i)]):
        start = first * info.piece_size
        end = min((last + 1) * info.piece_size, info.size) - 1
        headers = {"Authorization": source.authorization, "Range": f"bytes={start}-{end}"}
        resp = await upstream.request("GET", source.host, path, headers, follow_redirects=True)
        async with resp:
            if resp.status == 200 and start == 0 and end == info.size - 1:
                pass  # the whole blob asked for and given
            elif resp.status != 206:
                if 400 <= resp.status < 500 and resp.status != 416:
                    raise UpstreamRefusedError(
                        resp.status,
                        resp.headers.get("WWW-Authenticate"),
                        f"origin {source.host} answered HTTP {resp.status} for {key}",
                    )
                raise UpstreamUnavailableError(
                    f"origin {source.host} answered HTTP {resp.status} to a range of {key}"
                )
            for index in range(first, last + 1):
                length = info.piece_length(index)
                try:
                    data = await resp.content.readexactly(length)
                except Exception as exc:
                    raise UpstreamUnavailableError(f"origin range of {key} ended early") from exc
                expect = hashes[index] if index < len(hashes) else None
                await store.write_piece(key, index, data, expect=expect)
                total += length
    log.info("fetched %d bytes of %s from the origin %s (missing pieces only)", total, key,
             source.host)  # fmt: skip
    return total
