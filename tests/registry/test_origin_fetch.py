"""One fetch per blob from the real origin into the piece store, verified piece by piece."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from shoal.cache.store import PieceStore
from shoal.config import RegistryConfig, UpstreamConfig
from shoal.errors import DigestMismatchError
from shoal.lab.image import BuiltImage, build_image, push_image
from shoal.lab.origin import OriginRegistry
from shoal.observability import AuditLog, Metrics
from shoal.oci.digest import parse_digest
from shoal.registry.origin_fetch import OriginFetcher, Source, UpstreamRefusedError
from shoal.registry.upstream import UpstreamClient


@pytest.fixture
async def fetcher_parts(
    tmp_path: Path, origin: OriginRegistry
) -> AsyncIterator[tuple[PieceStore, UpstreamClient, list[tuple[str, int, bytes]]]]:
    registry = RegistryConfig(host=origin.address, plain_http=True)
    published: list[tuple[str, int, bytes]] = []
    async with (
        PieceStore(tmp_path / "store", capacity=1 << 30, piece_size=1 << 20) as store,
        UpstreamClient(UpstreamConfig(default=origin.address, registries=(registry,))) as up,
    ):
        yield store, up, published


async def big_image(tmp_path: Path, origin: OriginRegistry) -> BuiltImage:
    img = build_image(tmp_path / "big", repo="fetch/me", tag="1", layer_sizes=[5 << 20])
    await push_image(origin.url, img)
    return img


async def test_concurrent_requests_collapse_into_one_origin_fetch(
    tmp_path: Path,
    origin: OriginRegistry,
    fetcher_parts: tuple[PieceStore, UpstreamClient, list[tuple[str, int, bytes]]],
) -> None:
    store, up, published = fetcher_parts
    img = await big_image(tmp_path, origin)
    layer = img.layers[0]
    fetcher = OriginFetcher(
        store,
        up,
        Metrics("n:1", "root"),
        AuditLog(None),
        on_piece=lambda d, i, h, _c: published.append((d, i, h)),
    )
    digest = parse_digest(layer.digest)
    source = Source(origin.address, img.repo)
    started = await asyncio.gather(*(fetcher.start(digest, source) for _ in range(5)))
    infos = [info for info, _ in started]
    flights = {id(flight) for _, flight in started}
    assert len(flights) == 1
    assert {i.size for i in infos} == {layer.size}
    flight = started[0][1]
    assert flight is not None
    await flight.wait()
    assert origin.blob_gets(layer.digest) == 1
    assert [i for _, i, _ in published] == list(range(infos[0].piece_count))
    info = store.lookup(layer.digest)
    assert info is not None
    assert info.complete
    assert await store.read_range(layer.digest, 0, layer.size) == layer.path.read_bytes()
    again, none = await fetcher.start(digest, source)
    assert again.complete
    assert none is None
    assert origin.blob_gets(layer.digest) == 1


async def test_a_corrupted_origin_blob_fails_loudly_and_leaves_nothing(
    tmp_path: Path,
    origin: OriginRegistry,
    fetcher_parts: tuple[PieceStore, UpstreamClient, list[tuple[str, int, bytes]]],
) -> None:
    store, up, _ = fetcher_parts
    img = await big_image(tmp_path, origin)
    layer = img.layers[0]
    hexpart = layer.digest.split(":")[1]
    stored = (
        origin.workdir / "storage/docker/registry/v2/blobs/sha256" / hexpart[:2] / hexpart / "data"
    )
    raw = bytearray(stored.read_bytes())
    raw[-100] ^= 0x01
    stored.write_bytes(bytes(raw))
    fetcher = OriginFetcher(store, up, Metrics("n:1", "root"), AuditLog(None))
    _, flight = await fetcher.start(parse_digest(layer.digest), Source(origin.address, img.repo))
    assert flight is not None
    with pytest.raises(DigestMismatchError):
        await flight.wait()
    assert store.lookup(layer.digest) is None


async def test_origin_refusal_keeps_its_status(
    tmp_path: Path,
    origin: OriginRegistry,
    fetcher_parts: tuple[PieceStore, UpstreamClient, list[tuple[str, int, bytes]]],
) -> None:
    store, up, _ = fetcher_parts
    fetcher = OriginFetcher(store, up, Metrics("n:1", "root"), AuditLog(None))
    with pytest.raises(UpstreamRefusedError) as info:
        await fetcher.start(parse_digest("sha256:" + "0" * 64), Source(origin.address, "no/such"))
    assert info.value.http_status == 404
