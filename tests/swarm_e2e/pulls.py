"""Pulls through real agents for the fault tests: a runtime's requests, timed, checked."""

from __future__ import annotations

import asyncio
import hashlib
import time

import aiohttp

from shoal.lab.cluster import Node
from shoal.lab.image import BuiltImage

MANIFEST = ", ".join(
    (
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    )
)


async def pull(node: Node, img: BuiltImage, *, limit: float = 120.0) -> float:
    """What a runtime does: the manifest (the agent then joins every blob's swarm), then
    every blob at once, each hashed as it streams; seconds from the first request. A
    wrong byte or a cut stream raises."""
    start = time.monotonic()
    base = f"http://{node.mirror}/v2/{img.repo}"
    client = aiohttp.ClientTimeout(total=limit)
    async with aiohttp.ClientSession(timeout=client) as s:
        async with s.get(f"{base}/manifests/{img.tag}", headers={"Accept": MANIFEST}) as r:
            assert r.status == 200, await r.text()
            await r.read()

        async def blob(digest: str) -> None:
            h = hashlib.sha256()
            async with s.get(f"{base}/blobs/{digest}") as r:
                assert r.status == 200, await r.text()
                async for chunk in r.content.iter_chunked(1 << 20):
                    h.update(chunk)
            assert f"sha256:{h.hexdigest()}" == digest, f"{node.name}: {digest} corrupt"

        await asyncio.gather(*(blob(b.digest) for b in img.blobs()))
    return time.monotonic() - start


def uploaded(node: Node) -> int:
    """Bytes the node's peer server sent to other agents so far (its audit log)."""
    log = node.workdir / f"{node.name}-log" / "audit.log"
    total = 0
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return 0
    for line in lines:
        if "|rpc:pread[" in line and "[size=" in line:
            size = int(line.split("[size=")[1].split("]")[0])
            total += max(size, 0)
    return total
