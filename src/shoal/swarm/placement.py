"""Which root owns a blob: rendezvous (highest-random-weight) hashing of the digest.

Every agent computes the same owner from the same root list with no coordination, and
when a root leaves the list only its blobs move. The full order is the failover order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence


def rank_roots(digest: str, roots: Sequence[str]) -> list[str]:
    """Roots by descending weight for ``digest``: the owner first, then its successors."""

    def weight(root: str) -> bytes:
        return hashlib.sha256(f"{root}\n{digest}".encode()).digest()

    return sorted(roots, key=weight, reverse=True)


def owner(digest: str, roots: Sequence[str]) -> str:
    if not roots:
        raise ValueError("no roots configured")
    return rank_roots(digest, roots)[0]
