"""The image every mode pulls, its origin registry, and the check of what a node got.

The image is built once per run (incompressible layers, see ``shoal.lab.image``) and
pushed while the registry still listens on loopback in the root namespace; then the same
storage is served from inside the origin's namespace. So the push path never crosses the
black-holed test prefix, and the timed part only ever sees the shaped links.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from shoal.bench.errors import BenchError
from shoal.bench.proc import in_netns
from shoal.lab.image import BuiltImage, build_image, oci_layout_blob, push_image
from shoal.lab.origin import OriginRegistry

REGISTRY_PORT = 5000
REPO = "bench/app"
TAG = "v1"


@dataclass(frozen=True, slots=True)
class Workload:
    image: BuiltImage
    registry_host: str  # ``ip:port`` as it appears in the image reference

    @property
    def reference(self) -> str:
        return f"{self.registry_host}/{self.image.repo}:{self.image.tag}"

    @property
    def layer_bytes(self) -> int:
        return sum(layer.size for layer in self.image.layers)


def make_image(workdir: Path, layers: int, layer_bytes: int, seed: int) -> BuiltImage:
    return build_image(
        workdir / "image", repo=REPO, tag=TAG, layer_sizes=[layer_bytes] * layers, seed=seed
    )


async def push_via_loopback(storage_dir: Path, image: BuiltImage) -> None:
    """Push into ``storage_dir`` through a registry on 127.0.0.1, then stop it."""
    async with OriginRegistry(storage_dir) as staging:
        await push_image(staging.url, image)


async def wait_http(
    netns: str, url: str, timeout_s: float = 20.0, *, cafile: str | None = None
) -> None:
    """Wait until ``url`` answers from inside ``netns`` (the root namespace cannot see it);
    an ``https`` URL is verified against ``cafile``."""
    probe = (
        "import ssl, sys, urllib.request, urllib.error\n"
        "ctx = ssl.create_default_context(cafile=sys.argv[2]) if len(sys.argv) > 2 else None\n"
        "try:\n"
        "    urllib.request.urlopen(sys.argv[1], timeout=1, context=ctx)\n"
        "except urllib.error.HTTPError:\n"
        "    pass\n"
    )
    deadline = time.monotonic() + timeout_s
    while True:
        proc = await asyncio.create_subprocess_exec(
            *in_netns(netns, [sys.executable, "-c", probe, url, *([cafile] if cafile else [])]),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            stdin=asyncio.subprocess.DEVNULL,
        )
        if await proc.wait() == 0:
            return
        if time.monotonic() > deadline:
            raise BenchError(f"{url} did not answer inside {netns} within {timeout_s:.0f}s")
        await asyncio.sleep(0.2)


def check_layout(layout: Path, image: BuiltImage) -> str | None:
    """None when the OCI layout holds the image's layers and config, byte for byte."""
    try:
        index = json.loads((layout / "index.json").read_bytes())
        manifest_digest = index["manifests"][0]["digest"]
        manifest = json.loads(oci_layout_blob(layout, manifest_digest).read_bytes())
    except (OSError, ValueError, KeyError, IndexError) as exc:
        return f"no readable image in {layout.name}: {exc}"
    got = [layer["digest"] for layer in manifest.get("layers", [])]
    want = [layer.digest for layer in image.layers]
    if got != want:
        return f"layers {got} != {want}"
    if manifest.get("config", {}).get("digest") != image.config.digest:
        return "config digest differs"
    for digest in [*want, image.config.digest]:
        error = check_blob_file(oci_layout_blob(layout, digest), digest)
        if error:
            return error
    return None


def check_blob_file(path: Path, digest: str) -> str | None:
    """None when ``path`` hashes to ``digest``."""
    h = hashlib.sha256()
    try:
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    except OSError as exc:
        return f"{digest[:19]}: {exc.strerror}"
    if f"sha256:{h.hexdigest()}" != digest:
        return f"{digest[:19]}: wrong bytes"
    return None
