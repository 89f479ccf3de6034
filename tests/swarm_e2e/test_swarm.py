"""Real processes on loopback: one ``shoal root`` and several ``shoal agent`` pulling the
same image at once with skopeo, against the real origin registry."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from shoal.lab.cluster import LocalCluster, Node
from shoal.lab.image import BuiltImage, build_image, oci_layout_blob, push_image
from shoal.lab.origin import OriginRegistry
from shoal.lab.throttle import ThrottledForwarder
from tests.conftest import need_binary

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

AGENTS = 6


@pytest.fixture
async def swarm_image(tmp_path: Path, origin: OriginRegistry) -> BuiltImage:
    img = build_image(
        tmp_path / "swarm-img",
        repo="swarm/app",
        tag="v1",
        layer_sizes=[6 << 20, 3 << 20, 1 << 20, 100_000],
        with_index=True,
    )
    await push_image(origin.url, img)
    return img


@pytest.fixture
async def cluster(tmp_path: Path, origin: OriginRegistry) -> AsyncIterator[LocalCluster]:
    async with LocalCluster(tmp_path / "cluster", origin.address, agents=AGENTS) as c:
        yield c


async def skopeo_pull(tmp_path: Path, origin: OriginRegistry, node: Node, img: BuiltImage) -> Path:
    conf = tmp_path / f"{node.name}-registries.conf"
    conf.write_text(
        f'[[registry]]\nlocation = "{origin.address}"\ninsecure = true\n'
        f'[[registry.mirror]]\nlocation = "{node.mirror}"\ninsecure = true\n'
    )
    dest = tmp_path / f"{node.name}-pulled"
    proc = await asyncio.create_subprocess_exec(
        "skopeo",
        "copy",
        "--registries-conf",
        str(conf),
        "--src-tls-verify=false",
        f"docker://{origin.address}/{img.repo}:{img.tag}",
        f"oci:{dest}:{img.tag}",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()[-800:]
    return dest


def counts(text: str) -> dict[str, float]:
    return {
        s.labels["type"]: s.value
        for fam in text_string_to_metric_families(text)
        if fam.name == "DADIP2P_Count"
        for s in fam.samples
    }


async def test_agents_pull_at_once_and_the_origin_serves_each_blob_once(
    tmp_path: Path, origin: OriginRegistry, swarm_image: BuiltImage, cluster: LocalCluster
) -> None:
    need_binary("skopeo")
    dests = await asyncio.gather(
        *(skopeo_pull(tmp_path, origin, node, swarm_image) for node in cluster.agents)
    )
    for dest in dests:
        for blob in swarm_image.blobs():
            data = oci_layout_blob(dest, blob.digest).read_bytes()
            assert f"sha256:{hashlib.sha256(data).hexdigest()}" == blob.digest
    for blob in swarm_image.blobs():
        assert origin.blob_gets(blob.digest) == 1, f"{blob.digest} fetched more than once"
    peer_bytes = 0.0
    for node in cluster.agents:
        c = counts(await cluster.metrics(node))
        assert c["pread"] == swarm_image.total_size  # skopeo got every byte via its agent
        assert c["download"] == 0  # and no agent went to the origin itself
        peer_bytes += c["peer"]
    assert peer_bytes > 0
    root = counts(await cluster.metrics(cluster.roots[0]))
    assert root["download"] == swarm_image.total_size


async def test_the_root_killed_mid_blob_agents_fall_back_and_finish(
    tmp_path: Path, origin: OriginRegistry
) -> None:
    """The origin is slowed to 16 MiB/s so the root is still fetching when it dies."""
    img = build_image(tmp_path / "big", repo="swarm/big", tag="1", layer_sizes=[40 << 20])
    await push_image(origin.url, img)
    layer = img.layers[0]
    async with (
        ThrottledForwarder("127.0.0.1", origin.port, 16 << 20) as slow,
        LocalCluster(tmp_path / "c2", f"127.0.0.1:{slow.port}", agents=3) as cluster,
    ):
        root = cluster.roots[0]

        async def pull(node: Node) -> str:
            url = f"http://{node.mirror}/v2/{img.repo}/blobs/{layer.digest}"
            h = hashlib.sha256()
            async with aiohttp.ClientSession() as s, s.get(url) as r:
                assert r.status == 200
                got = 0
                async for chunk in r.content.iter_chunked(1 << 20):
                    h.update(chunk)
                    got += len(chunk)
                    if got > (4 << 20) and root.alive:
                        await root.kill()
            return f"sha256:{h.hexdigest()}"

        results = await asyncio.gather(*(pull(n) for n in cluster.agents))
        assert results == [layer.digest] * 3
        assert not root.alive
        fallbacks = 0.0
        for node in cluster.agents:
            for fam in text_string_to_metric_families(await cluster.metrics(node)):
                if fam.name == "shoal_origin_fallback":
                    fallbacks += sum(s.value for s in fam.samples)
        assert fallbacks >= 1, "no agent fell back to the origin"


async def test_accelerator_range_fetches_only_the_pieces_it_needs(
    tmp_path: Path, origin: OriginRegistry, cluster: LocalCluster
) -> None:
    img = build_image(tmp_path / "lazy", repo="swarm/lazy", tag="1", layer_sizes=[12 << 20])
    await push_image(origin.url, img)
    layer = img.layers[0]
    data = layer.path.read_bytes()
    node = cluster.agents[0]
    blob_url = f"http://{origin.address}/v2/{img.repo}/blobs/{layer.digest}"
    first = (5 << 20) + 100  # inside piece 5 of 1 MiB pieces, crossing into piece 6
    last = first + (1 << 20)
    async with aiohttp.ClientSession() as s:
        url = f"http://{node.mirror}/accelerator/{blob_url}"
        async with s.get(url, headers={"Range": f"bytes={first}-{last}"}) as r:
            assert r.status == 206
            assert await r.read() == data[first : last + 1]
    received = counts(await cluster.metrics(node))["peer"]
    assert received == 2 << 20  # two pieces, not twelve


async def test_serving_an_image_manifest_starts_every_blob_of_it(
    tmp_path: Path, origin: OriginRegistry, swarm_image: BuiltImage, cluster: LocalCluster
) -> None:
    """The runtime asks for layers a few at a time (skopeo asks for the config last);
    an agent that served the manifest joins every blob's swarm at once. An index names
    manifests, not blobs: it starts nothing."""
    node = cluster.agents[0]
    base = f"http://{node.mirror}/v2/{swarm_image.repo}/manifests"
    accept = {"Accept": "application/vnd.oci.image.index.v1+json"}
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base}/{swarm_image.tag}", headers=accept) as r:
            assert r.status == 200 and await r.read() == swarm_image.index
        await asyncio.sleep(1.0)
        assert counts(await cluster.metrics(node))["peer"] == 0
        accept = {"Accept": "application/vnd.oci.image.manifest.v1+json"}
        async with session.get(f"{base}/{swarm_image.manifest_digest}", headers=accept) as r:
            assert r.status == 200 and await r.read() == swarm_image.manifest
    # nobody asked for a blob: the agent fetched them all through the swarm by itself
    for _ in range(200):
        if counts(await cluster.metrics(node))["peer"] >= swarm_image.total_size:
            break
        await asyncio.sleep(0.1)
    assert counts(await cluster.metrics(node))["peer"] == swarm_image.total_size
    for blob in swarm_image.blobs():
        assert origin.blob_gets(blob.digest) == 1  # by the root, once
    # the pull is then served from the store: no byte comes in twice
    dest = await skopeo_pull(tmp_path, origin, node, swarm_image)
    for blob in swarm_image.blobs():
        data = oci_layout_blob(dest, blob.digest).read_bytes()
        assert f"sha256:{hashlib.sha256(data).hexdigest()}" == blob.digest
    c = counts(await cluster.metrics(node))
    assert c["pread"] == swarm_image.total_size and c["peer"] == swarm_image.total_size
