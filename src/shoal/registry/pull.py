"""``shoal pull``: an image into an OCI layout directory, with a progress display.

Every blob is verified against its digest before it is renamed into place, so the
layout never holds a partial or corrupted blob under a digest's name.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from shoal.errors import ConfigInvalidError, DigestMismatchError
from shoal.oci.digest import DigestVerifier, digest_of, parse_digest
from shoal.oci.manifest import (
    INDEX_TYPES,
    Descriptor,
    media_type_of,
    parse_index,
    parse_manifest,
    pick_platform,
)
from shoal.oci.reference import split_image
from shoal.registry.client import RegistryClient

CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class PullResult:
    image: str
    manifest_digest: str
    blobs: tuple[str, ...]
    bytes: int
    seconds: float


async def pull_image(
    image: str,
    dest: Path,
    *,
    mirror: str | None = None,
    plain_http: bool = False,
    credentials: tuple[str, str] | None = None,
    progress: Progress | None = None,
    total_task: TaskID | None = None,
    concurrency: int = 4,
) -> PullResult:
    """Pull ``image`` into ``dest``; with ``total_task`` only that bar advances (one per
    pull when many run at once), else a bar per blob plus a total."""
    start = time.perf_counter()
    host, repo, ref = split_image(image)
    blob_dir = dest / "blobs" / "sha256"
    blob_dir.mkdir(parents=True, exist_ok=True)
    async with RegistryClient(
        host, plain_http=plain_http, mirror=mirror, credentials=credentials
    ) as client:
        top = await _fetch_manifest(client, repo, ref)
        body, media, digest = top
        if media in INDEX_TYPES:
            _write_blob(blob_dir, digest, body)
            chosen = pick_platform(parse_index(body))
            body, media, digest = await _fetch_manifest(client, repo, chosen["digest"])
        _write_blob(blob_dir, digest, body)
        manifest = parse_manifest(body)
        blobs: list[Descriptor] = [manifest["config"], *manifest["layers"]]
        per_blob = total_task is None
        if progress is not None:
            total = sum(b["size"] for b in blobs)
            if total_task is None:
                total_task = progress.add_task("total", total=total)
            else:
                progress.update(total_task, total=total)
        limit = asyncio.Semaphore(concurrency)

        async def one(desc: Descriptor) -> None:
            async with limit:
                await _fetch_blob(client, repo, desc, blob_dir, progress, total_task, per_blob)

        await asyncio.gather(*(one(b) for b in blobs))
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": media,
                "digest": digest,
                "size": len(body),
                "annotations": {"org.opencontainers.image.ref.name": ref},
            }
        ],
    }
    (dest / "index.json").write_text(json.dumps(index))
    (dest / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    return PullResult(
        image=image,
        manifest_digest=digest,
        blobs=tuple(b["digest"] for b in blobs),
        bytes=sum(b["size"] for b in blobs),
        seconds=time.perf_counter() - start,
    )


async def _fetch_manifest(client: RegistryClient, repo: str, ref: str) -> tuple[bytes, str, str]:
    async with client.get(repo, "manifests", ref) as resp:
        body = await resp.read()
        media = media_type_of(body, resp.headers.get("Content-Type"))
    if ":" in ref:
        expected = parse_digest(ref)
        if digest_of(body, expected.algorithm) != ref:
            raise DigestMismatchError(f"manifest {ref} does not match its digest")
        return body, media, ref
    return body, media, digest_of(body)


def _write_blob(blob_dir: Path, digest: str, body: bytes) -> None:
    (blob_dir / digest.split(":", 1)[1]).write_bytes(body)


async def _fetch_blob(
    client: RegistryClient,
    repo: str,
    desc: Descriptor,
    blob_dir: Path,
    progress: Progress | None,
    total_task: TaskID | None,
    per_blob: bool,
) -> None:
    digest = parse_digest(desc["digest"])
    final = blob_dir / digest.hex
    tmp = final.with_suffix(".partial")
    task = (
        progress.add_task(desc["digest"][7:19], total=desc["size"])
        if progress is not None and per_blob
        else None
    )
    verifier = DigestVerifier(digest)
    async with client.get(repo, "blobs", str(digest)) as resp:
        with tmp.open("wb") as out:
            async for chunk in resp.content.iter_chunked(CHUNK):
                verifier.update(chunk)
                out.write(chunk)
                if progress is not None:
                    if task is not None:
                        progress.advance(task, len(chunk))
                    if total_task is not None:
                        progress.advance(total_task, len(chunk))
    if verifier.size != desc["size"] or not verifier.matches():
        tmp.unlink(missing_ok=True)
        raise DigestMismatchError(f"blob {digest}: received bytes do not match the manifest")
    os.replace(tmp, final)


def make_progress(console: Console | None = None) -> Progress:
    return Progress(
        TextColumn("{task.description:>12}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def run_pull(args: argparse.Namespace) -> int:
    creds = None
    if args.user:
        user, sep, password = args.user.partition(":")
        if not sep:
            raise ConfigInvalidError("--user must be USER:PASSWORD")
        creds = (user, password)
    dest = Path(args.dest)
    if args.quiet:
        result = asyncio.run(
            pull_image(
                args.image, dest, mirror=args.mirror, plain_http=args.plain_http, credentials=creds
            )
        )
    else:
        with make_progress() as progress:
            result = asyncio.run(
                pull_image(
                    args.image,
                    dest,
                    mirror=args.mirror,
                    plain_http=args.plain_http,
                    credentials=creds,
                    progress=progress,
                )
            )
    mib = result.bytes / (1 << 20)
    print(
        f"pulled {result.image} ({result.manifest_digest}): {len(result.blobs)} blobs, "
        f"{mib:.1f} MiB in {result.seconds:.2f} s"
    )
    return 0
