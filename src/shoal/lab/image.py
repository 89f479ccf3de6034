"""Images of incompressible layers, built on disk and pushed with the OCI push API.

Each layer is a real ``tar+gzip`` holding one file of seeded random bytes, so that
containerd can unpack it and no compression flatters a figure. Building streams to
disk: a 1 GiB layer never sits in memory.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import random
import ssl
import tarfile
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from shoal.errors import ShoalError

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
CHUNK = 1 << 20


class PushFailedError(ShoalError):
    """The registry refused part of an image push."""


@dataclass(frozen=True, slots=True)
class Blob:
    digest: str
    size: int
    media_type: str
    path: Path


@dataclass(frozen=True, slots=True)
class BuiltImage:
    repo: str
    tag: str
    config: Blob
    layers: tuple[Blob, ...]
    manifest: bytes
    manifest_digest: str
    index: bytes | None = None
    index_digest: str | None = None
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def top_digest(self) -> str:
        """What a pull by tag resolves to: the index when there is one, else the manifest."""
        return self.index_digest or self.manifest_digest

    @property
    def total_size(self) -> int:
        return self.config.size + sum(layer.size for layer in self.layers)

    def blobs(self) -> tuple[Blob, ...]:
        return (self.config, *self.layers)


def _write_layer(path: Path, size: int, rng: random.Random, name: str) -> tuple[Blob, str]:
    """A gzip'd tar with one file of ``size`` random bytes; returns (blob, diff_id).

    Deflate level 0 (stored blocks) keeps generation fast: random bytes do not compress
    anyway, and the layer is a valid ``tar+gzip`` that clients keep as it is (skopeo
    would recompress an uncompressed layer into an OCI layout, changing its digest).
    """
    blob_hash = hashlib.sha256()
    tar_hash = hashlib.sha256()
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o755
    header = info.tobuf(format=tarfile.PAX_FORMAT)
    deflate = zlib.compressobj(0, zlib.DEFLATED, 31)
    with path.open("wb") as out:

        def emit(data: bytes) -> None:
            tar_hash.update(data)
            packed = deflate.compress(data)
            blob_hash.update(packed)
            out.write(packed)

        emit(header)
        left = size
        while left:
            n = min(CHUNK, left)
            emit(rng.randbytes(n))
            left -= n
        emit(b"\0" * ((-size) % tarfile.BLOCKSIZE + 2 * tarfile.BLOCKSIZE))
        tail = deflate.flush()
        blob_hash.update(tail)
        out.write(tail)
        total = out.tell()
    blob = Blob(f"sha256:{blob_hash.hexdigest()}", total, OCI_LAYER_GZIP, path)
    return blob, f"sha256:{tar_hash.hexdigest()}"


def build_image(
    workdir: Path,
    *,
    repo: str = "shoal/demo",
    tag: str = "latest",
    layer_sizes: list[int],
    seed: int = 1,
    with_index: bool = False,
) -> BuiltImage:
    """Write config, layers and manifest (and an index if asked) under ``workdir``."""
    workdir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    written = [
        _write_layer(workdir / f"layer{i}.tar.gz", size, rng, f"data/layer{i}.bin")
        for i, size in enumerate(layer_sizes)
    ]
    layers = tuple(blob for blob, _ in written)
    config_doc = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["/data/layer0.bin"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id for _, diff_id in written]},
        "history": [{"created_by": f"shoal lab layer {i}"} for i in range(len(layers))],
    }
    config_bytes = json.dumps(config_doc, sort_keys=True).encode()
    config_path = workdir / "config.json"
    config_path.write_bytes(config_bytes)
    config = Blob(_digest(config_bytes), len(config_bytes), OCI_CONFIG, config_path)
    manifest_doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config.digest, "size": config.size},
        "layers": [
            {"mediaType": layer.media_type, "digest": layer.digest, "size": layer.size}
            for layer in layers
        ],
    }
    manifest = json.dumps(manifest_doc, sort_keys=True).encode()
    index = index_digest = None
    if with_index:
        index_doc = {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {
                    "mediaType": OCI_MANIFEST,
                    "digest": _digest(manifest),
                    "size": len(manifest),
                    "platform": {"architecture": "amd64", "os": "linux"},
                }
            ],
        }
        index = json.dumps(index_doc, sort_keys=True).encode()
        index_digest = _digest(index)
    return BuiltImage(
        repo=repo,
        tag=tag,
        config=config,
        layers=layers,
        manifest=manifest,
        manifest_digest=_digest(manifest),
        index=index,
        index_digest=index_digest,
    )


def _digest(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


async def _file_chunks(path: Path) -> AsyncIterator[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            yield chunk


def basic_authorization(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def push_image(
    registry_url: str,
    image: BuiltImage,
    *,
    authorization: str = "",
    ssl_context: ssl.SSLContext | None = None,
) -> None:
    """Push every blob (monolithic upload), then the manifest, then the index by tag."""
    timeout = aiohttp.ClientTimeout(total=None, sock_read=120)
    headers = {"Authorization": authorization} if authorization else {}
    connector = aiohttp.TCPConnector(ssl=ssl_context if ssl_context is not None else True)
    async with aiohttp.ClientSession(
        headers=headers, timeout=timeout, connector=connector
    ) as session:
        for blob in image.blobs():
            await _push_blob(session, registry_url, image.repo, blob)
        manifest_ref = image.tag if image.index is None else image.manifest_digest
        await _put_manifest(
            session, registry_url, image.repo, manifest_ref, image.manifest, OCI_MANIFEST
        )
        if image.index is not None:
            await _put_manifest(
                session, registry_url, image.repo, image.tag, image.index, OCI_INDEX
            )


async def _push_blob(session: aiohttp.ClientSession, base: str, repo: str, blob: Blob) -> None:
    async with session.head(f"{base}/v2/{repo}/blobs/{blob.digest}") as resp:
        if resp.status == 200:
            return
    async with session.post(f"{base}/v2/{repo}/blobs/uploads/") as resp:
        if resp.status != 202:
            raise PushFailedError(f"upload start for {blob.digest}: HTTP {resp.status}")
        location = resp.headers["Location"]
    if location.startswith("/"):
        location = base + location
    sep = "&" if "?" in location else "?"
    headers = {"Content-Type": "application/octet-stream", "Content-Length": str(blob.size)}
    async with session.put(
        f"{location}{sep}digest={blob.digest}", data=_file_chunks(blob.path), headers=headers
    ) as resp:
        if resp.status != 201:
            raise PushFailedError(f"upload of {blob.digest}: HTTP {resp.status}")


async def _put_manifest(
    session: aiohttp.ClientSession, base: str, repo: str, ref: str, body: bytes, media: str
) -> None:
    async with session.put(
        f"{base}/v2/{repo}/manifests/{ref}", data=body, headers={"Content-Type": media}
    ) as resp:
        if resp.status != 201:
            text = (await resp.text())[:200]
            raise PushFailedError(f"manifest {ref}: HTTP {resp.status} {text}")


def oci_layout_blob(layout: Path, digest: str) -> Path:
    algo, _, hexpart = digest.partition(":")
    return layout / "blobs" / algo / hexpart


def read_index(layout: Path) -> dict[str, object]:
    data: dict[str, object] = json.loads((layout / "index.json").read_bytes())
    return data


def tar_member_names(data: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return tar.getnames()
