"""How an agent joins a blob's swarm at its root, with the control calls stubbed."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from shoal.agent.swarm import JOIN_TRIES, Download
from shoal.control.client import RootUnavailableError
from shoal.control.schema import BlobState, JoinRequest
from shoal.control.schema import Source as WireSource
from shoal.oci.digest import parse_digest
from shoal.registry.origin_fetch import Source

DIGEST = parse_digest("sha256:" + "ab" * 32)
REQ = JoinRequest(peer="me:1", blob=str(DIGEST), source=WireSource("origin:5000", "app", ""))


JOINED = BlobState(str(DIGEST), 10, 1 << 20, 0, [])


class Root:
    """Fails the first ``failures`` joins, slow (``busy``) or refusing."""

    def __init__(self, failures: int, *, busy: bool) -> None:
        self.failures = failures
        self.busy = busy
        self.calls = 0

    async def join(self, root: str, req: JoinRequest) -> BlobState:
        self.calls += 1
        if self.calls <= self.failures:
            error = RootUnavailableError(f"root {root} unreachable")
            error.busy = self.busy
            raise error
        return JOINED


def download(root: Root) -> Download:
    provider: Any = SimpleNamespace(control=root)
    return Download(provider, DIGEST, Source("origin:5000", "app", ""))


async def test_a_slow_root_is_asked_again_before_anyone_goes_to_the_origin() -> None:
    root = Root(JOIN_TRIES - 1, busy=True)
    assert await download(root)._join_one("root:1", REQ) is JOINED
    assert root.calls == JOIN_TRIES


async def test_a_root_slow_every_time_or_refusing_is_given_up() -> None:
    slow = Root(JOIN_TRIES, busy=True)
    with pytest.raises(RootUnavailableError):
        await download(slow)._join_one("root:1", REQ)
    assert slow.calls == JOIN_TRIES
    refusing = Root(1, busy=False)  # connection refused: no point in waiting
    with pytest.raises(RootUnavailableError):
        await download(refusing)._join_one("root:1", REQ)
    assert refusing.calls == 1
