"""One real ``shoal agent`` process without roots (it fetches from the origin itself),
and the requests a runtime or a plain Range reader makes of it."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from shoal.cache.journal import blob_dir, data_path
from shoal.lab.cluster import LocalCluster, Node


@asynccontextmanager
async def lone_agent(
    workdir: Path, origin: str, *, cache: Path | None = None, piece_size: int = 1 << 20
) -> AsyncIterator[tuple[LocalCluster, Node]]:
    extra = {"CacheConfig": {"path": str(cache)}} if cache is not None else {}
    async with LocalCluster(
        workdir, origin, agents=1, roots=0, piece_size=piece_size, extra=extra
    ) as cluster:
        yield cluster, cluster.agents[0]


def data_file(cluster: LocalCluster, node: Node, digest: str) -> Path:
    cache = Path(cluster.config(node)["CacheConfig"]["path"])
    return data_path(blob_dir(cache, digest))


@dataclass(frozen=True, slots=True)
class Answer:
    """What a client got: the status, the bytes, whether the body came whole, and the
    OCI error code of an error body."""

    status: int
    body: bytes
    whole: bool
    code: str = ""

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.body).hexdigest()


async def get(
    node: Node, repo: str, digest: str, *, byte_range: tuple[int, int] | None = None
) -> Answer:
    """A GET of the blob (or of bytes ``lo..hi`` inclusive); a cut body is not an error
    here, it is an answer with ``whole=False``."""
    url = f"http://{node.mirror}/v2/{repo}/blobs/{digest}"
    headers = {} if byte_range is None else {"Range": f"bytes={byte_range[0]}-{byte_range[1]}"}
    body = bytearray()
    async with aiohttp.ClientSession() as s, s.get(url, headers=headers) as r:
        try:
            async for chunk in r.content.iter_chunked(1 << 20):
                body += chunk
        except aiohttp.ClientPayloadError:
            return Answer(r.status, bytes(body), whole=False)
        code = ""
        if r.status >= 400:
            try:
                code = json.loads(body)["errors"][0]["code"]
            except (ValueError, KeyError, IndexError, TypeError):
                code = "?"
        return Answer(r.status, bytes(body), whole=True, code=code)
