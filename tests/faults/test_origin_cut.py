"""An origin connection cut mid-blob fails the client's stream at once; the next GET
succeeds. Real parts: the origin registry, a ``shoal agent`` process with a store and
no roots (it fetches from the origin itself), and a forwarder between them that cuts
the connection as a network would (an abort, or a FIN mid-body).

A stalled connection (bytes stop, no FIN) is not a cut: ``UpstreamConfig.timeout``
decides when that one fails."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from shoal.lab.image import build_image, push_image
from shoal.lab.origin import OriginRegistry
from tests.faults.agent import get, lone_agent
from tests.faults.cutter import CuttingForwarder

pytestmark = [pytest.mark.e2e]

MiB = 1 << 20


@pytest.mark.parametrize("how", ["reset", "close"])
async def test_an_origin_cut_fails_the_stream_at_once_and_the_next_get_succeeds(
    tmp_path: Path, origin: OriginRegistry, how: str
) -> None:
    # a small layer (its pieces go out from memory as they arrive) and a big one
    # (written, then sent from the page cache)
    img = build_image(tmp_path / "img", repo="cut/app", tag="1", layer_sizes=[6 * MiB, 40 * MiB])
    await push_image(origin.url, img)
    host, port = origin.address.rsplit(":", 1)
    async with (
        CuttingForwarder(host, int(port)) as fwd,
        lone_agent(tmp_path / "c", fwd.address) as (_, node),
    ):
        for cuts, layer in enumerate(img.layers, start=1):
            fwd.cut_after(layer.size // 3, how)
            start = time.monotonic()
            async with asyncio.timeout(20):
                cut = await get(node, img.repo, layer.digest)
            failed_after = time.monotonic() - start
            assert fwd.cuts == cuts
            assert cut.status == 200 and not cut.whole, "the client must see a cut body"
            assert len(cut.body) < layer.size
            assert layer.path.read_bytes().startswith(cut.body), "what came before was true"
            assert failed_after < 5, f"the stream failed only after {failed_after:.1f} s"
            async with asyncio.timeout(20):
                again = await get(node, img.repo, layer.digest)
            assert again.status == 200 and again.whole
            assert again.digest == layer.digest
