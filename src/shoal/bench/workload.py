"""The image every mode pulls, its origin registry, and the check of what a node got.

The image is built once per run (incompressible layers, see ``shoal.lab.image``) and
pushed while the registry still listens on loopback in the root namespace; then the same
storage is served from inside the origin's namespace. So the push path never crosses the
black-holed test prefix, and the timed part only ever sees the shaped links.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import sys
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
    an ``https`` URL is verified against ``cafile``.

    One probe process per wait, polling every 0.2 s inside: an interpreter started per
    poll cost ~40 ms of CPU each, and 17 processes starting at once were polled ~25
    times each, so the probes' CPU (counted in the mode's own CPU) and their load on the
    machine slowed the very start-up they waited for."""
    probe = (
        "import ssl, sys, time, urllib.request, urllib.error\n"
        "ctx = ssl.create_default_context(cafile=sys.argv[3]) if len(sys.argv) > 3 else None\n"
        "end = time.monotonic() + float(sys.argv[2])\n"
        "while True:\n"
        "    try:\n"
        "        urllib.request.urlopen(sys.argv[1], timeout=1, context=ctx)\n"
        "        break\n"
        "    except urllib.error.HTTPError:\n"
        "        break\n"
        "    except OSError:\n"
        "        if time.monotonic() > end:\n"
        "            sys.exit(1)\n"
        "        time.sleep(0.2)\n"
    )
    argv = [sys.executable, "-c", probe, url, f"{timeout_s:g}", *([cafile] if cafile else [])]
    proc = await asyncio.create_subprocess_exec(
        *in_netns(netns, argv),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        stdin=asyncio.subprocess.DEVNULL,
    )
    try:
        code = await proc.wait()
    except asyncio.CancelledError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    if code != 0:
        raise BenchError(f"{url} did not answer inside {netns} within {timeout_s:.0f}s")


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
