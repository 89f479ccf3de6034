"""A sick disk under a running agent costs a retry, never a wrong byte.

Real parts: the origin registry, a ``shoal agent`` process with a store and no roots
(it fetches from the origin itself), plain HTTP clients (one that checks the digest of
what it got, one that reads Ranges and checks nothing), a peer client reading pieces
from the agent's peer port, and for the full disk a real 64 MiB tmpfs this test mounts.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.lab.cluster import LocalCluster
from shoal.lab.image import build_image, push_image
from shoal.lab.origin import OriginRegistry
from shoal.peer import PeerClient, PeerRequestError
from shoal.wire import ErrorCode
from tests.faults.agent import data_file, get, lone_agent

pytestmark = [pytest.mark.e2e]

MiB = 1 << 20


def flip(path: Path, offsets: list[int]) -> None:
    """Bytes rot on disk: four bytes at each offset inverted, in place."""
    with path.open("r+b") as fh:
        for at in offsets:
            fh.seek(at)
            old = fh.read(4)
            fh.seek(at)
            fh.write(bytes(b ^ 0xFF for b in old))


async def test_bytes_rotten_on_disk_are_never_served_and_come_back_whole(
    tmp_path: Path, origin: OriginRegistry
) -> None:
    img = build_image(tmp_path / "img", repo="rot/app", tag="1", layer_sizes=[24 * MiB])
    await push_image(origin.url, img)
    layer = img.layers[0]
    true = layer.path.read_bytes()
    async with lone_agent(tmp_path / "c", origin.address) as (cluster, node):
        first = await get(node, img.repo, layer.digest)
        assert first.whole and first.digest == layer.digest
        data = data_file(cluster, node, layer.digest)
        served = 0  # bytes the clients and the peer got after a flip

        # a Range reader that checks nothing: a cut or the origin's bytes, never others
        flip(data, [5 * MiB + 100])
        for lo, hi in ((5 * MiB, 5 * MiB + 4095), (0, 1023), (5 * MiB + 64, 5 * MiB + 200)):
            async with asyncio.timeout(20):
                got = await get(node, img.repo, layer.digest, byte_range=(lo, hi))
            assert got.status == 206
            assert true[lo : lo + len(got.body)] == got.body, f"wrong bytes in {lo}-{hi}"
            served += len(got.body)
        async with asyncio.timeout(20):
            await get(node, img.repo, layer.digest)  # whole again (fetched anew if needed)
        # a runtime that checks the digest: a cut, or the blob whole and true
        flip(data, [len(true) - 10, 17 * MiB])
        for _ in range(3):
            async with asyncio.timeout(20):
                got = await get(node, img.repo, layer.digest)
            assert got.status == 200
            assert true.startswith(got.body), "a wrong byte reached the runtime"
            served += len(got.body)
            if got.whole:
                break
        assert got.whole and got.digest == layer.digest, "the blob came back whole"
        assert served > 0
    log = node.log.read_text(errors="replace")
    assert log.count("dropping") >= 2, "each flip was caught"


async def test_a_peer_is_never_sent_a_rotten_piece(tmp_path: Path, origin: OriginRegistry) -> None:
    """Agents serve pieces to each other from their stores: a piece rotten on disk is
    answered PIECE_MISSING (the asker goes elsewhere) and dropped from the store, never
    sent; the rest still is."""
    img = build_image(tmp_path / "img", repo="rot/peer", tag="1", layer_sizes=[12 * MiB])
    await push_image(origin.url, img)
    layer = img.layers[0]
    true = layer.path.read_bytes()
    async with LocalCluster(tmp_path / "c", origin.address, agents=1) as cluster:
        node = cluster.agents[0]
        first = await get(node, img.repo, layer.digest)
        assert first.whole and first.digest == layer.digest
        flip(data_file(cluster, node, layer.digest), [3 * MiB + 7])
        where = ("127.0.0.1", node.p2p_port)
        async with PeerClient(cluster.secret.encode()) as peer:
            with pytest.raises(PeerRequestError) as err:
                await peer.read(where, layer.digest, 3 * MiB, MiB)
            assert err.value.code == ErrorCode.PIECE_MISSING
            assert bytes(await peer.read(where, layer.digest, 0, MiB)) == true[:MiB]
    log = node.log.read_text(errors="replace")
    assert f"dropping piece 3 of {layer.digest}" in log, "the rotten piece left the store"


async def test_a_deleted_or_truncated_data_file_is_fetched_again(
    tmp_path: Path, origin: OriginRegistry
) -> None:
    img = build_image(tmp_path / "img", repo="lost/app", tag="1", layer_sizes=[12 * MiB, 20 * MiB])
    await push_image(origin.url, img)
    gone, short = img.layers
    async with lone_agent(tmp_path / "c", origin.address) as (cluster, node):
        for layer in (gone, short):
            first = await get(node, img.repo, layer.digest)
            assert first.whole and first.digest == layer.digest
        data_file(cluster, node, gone.digest).unlink()
        os.truncate(data_file(cluster, node, short.digest), 7 * MiB + 3)
        for layer in (gone, short):
            async with asyncio.timeout(20):
                got = await get(node, img.repo, layer.digest)
            assert got.status == 200 and got.whole, f"the next GET of {layer.digest} failed"
            assert got.digest == layer.digest
            stored = data_file(cluster, node, layer.digest)
            assert stored.stat().st_size == layer.size


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 64 MiB file system, mounted here and removed after."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mnt)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount tmpfs: {done.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


async def test_a_full_disk_relays_what_does_not_fit_and_keeps_serving(
    tmp_path: Path, origin: OriginRegistry, small_disk: Path
) -> None:
    """A 200 MiB image on a 64 MiB disk: every layer reaches the client whole (stored or
    relayed unstored) or as an OCI error, within 10 s; a new small blob is served
    after; what stays on the disk is whole blobs, not partial ones."""
    big = build_image(
        tmp_path / "big", repo="full/big", tag="1", layer_sizes=[50 * MiB] * 4, seed=3
    )
    small = build_image(tmp_path / "small", repo="full/small", tag="1", layer_sizes=[MiB])
    await push_image(origin.url, big)
    await push_image(origin.url, small)
    cache = small_disk / "cache"
    async with lone_agent(tmp_path / "c", origin.address, cache=cache) as (_, node):

        async def one(digest: str) -> tuple[float, str, bool]:
            start = time.monotonic()
            async with asyncio.timeout(30):
                got = await get(node, big.repo, digest)
            ok = got.status == 200 and got.whole and got.digest == digest
            assert ok or (got.status >= 400 and got.code), (got.status, got.whole, got.code)
            return time.monotonic() - start, got.code, ok

        results = await asyncio.gather(*(one(b.digest) for b in big.layers))
        for took, code, ok in results:
            assert took < 10, f"a layer took {took:.1f} s ({'whole' if ok else code})"
        assert all(ok for _, _, ok in results), "each came whole, stored or relayed"
        layer = small.layers[0]
        async with asyncio.timeout(10):
            got = await get(node, small.repo, layer.digest)
        assert got.whole and got.digest == layer.digest
        # every data file left is a whole, true blob
        known = {b.digest for b in (*big.layers, *small.layers)}
        for data in cache.rglob("data"):
            digest = "sha256:" + data.parent.name
            assert digest in known
            assert "sha256:" + hashlib.sha256(data.read_bytes()).hexdigest() == digest, (
                f"a partial blob was left on the disk: {digest}"
            )
        st = os.statvfs(small_disk)
        assert st.f_bavail * st.f_frsize > 2 * MiB, "the disk was left full"
        log = node.log.read_text(errors="replace")
        assert "relaying it unstored" in log, "some layer did not fit and was relayed"
