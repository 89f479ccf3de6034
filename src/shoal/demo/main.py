"""``shoal demo``: the peer-to-peer system on one machine, beside the standard pull.

Everything is real and local: Debian's docker-registry holding a generated multi-layer
image behind a throttling forwarder (the egress of a busy registry), then ``shoal root``
and eight ``shoal agent`` processes started from config files. Eight nodes pull the
image at once straight from the origin, then eight pull it at once through their own
agents. Bytes from the origin are read from the origin's own log, so the figure does not
depend on shoal reporting honestly; every pulled blob is checked against its digest.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import shutil
import statistics
import tempfile
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
from rich.table import Table

from shoal.errors import ShoalError
from shoal.lab.cluster import LocalCluster
from shoal.lab.image import BuiltImage, build_image, oci_layout_blob, push_image
from shoal.lab.origin import OriginRegistry
from shoal.lab.throttle import ThrottledForwarder
from shoal.registry.pull import PullResult, pull_image

MiB = 1 << 20


class DemoFailedError(ShoalError):
    """A step of the demo did not do what it should."""


def run_demo(args: argparse.Namespace) -> int:
    if args.layers < 1 or args.layer_mib < 1 or args.nodes < 1 or args.origin_mib <= 0:
        raise DemoFailedError("--layers, --layer-mib, --nodes and --origin-mib must be positive")
    console = Console()
    if args.workdir:
        workdir = Path(args.workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        asyncio.run(_demo(console, workdir, args))
    else:
        with tempfile.TemporaryDirectory(prefix="shoal-demo-") as tmp:
            asyncio.run(_demo(console, Path(tmp), args))
    return 0


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description:>8}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        console=console,
    )


async def _pull_all(
    console: Console,
    ref: str,
    dests: list[Path],
    mirrors: list[str | None],
) -> list[PullResult]:
    with _progress(console) as progress:

        async def one(i: int) -> PullResult:
            task = progress.add_task(f"node {i + 1}", total=None)
            result = await pull_image(
                ref,
                dests[i],
                mirror=mirrors[i],
                plain_http=True,
                progress=progress,
                total_task=task,
            )
            return result

        return await asyncio.gather(*(one(i) for i in range(len(dests))))


def _check(dest: Path, image: BuiltImage) -> None:
    for blob in image.blobs():
        data = oci_layout_blob(dest, blob.digest).read_bytes()
        if f"sha256:{hashlib.sha256(data).hexdigest()}" != blob.digest:
            raise DemoFailedError(f"pulled blob {blob.digest} does not match its digest")


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(0.95 * len(ordered)) - 1))]


async def _demo(console: Console, workdir: Path, args: argparse.Namespace) -> None:
    if shutil.which("docker-registry") is None:
        raise DemoFailedError("docker-registry is missing: run `make install` first")
    nodes = args.nodes
    console.rule("[bold]shoal demo")
    image = build_image(
        workdir / "image",
        repo="shoal/demo",
        tag="latest",
        layer_sizes=[args.layer_mib * MiB] * args.layers,
        with_index=True,
    )
    size = image.total_size
    console.print(
        f"image: {args.layers} layers x {args.layer_mib} MiB of random bytes ({size / MiB:.1f} MiB)"
    )
    async with OriginRegistry(workdir / "origin") as origin:
        await push_image(origin.url, image)
        rate = args.origin_mib * MiB
        async with ThrottledForwarder("127.0.0.1", origin.port, rate) as busy:
            address = f"127.0.0.1:{busy.port}"
            ref = f"{address}/{image.repo}:{image.tag}"
            console.print(
                f"origin: docker-registry behind a {args.origin_mib} MiB/s link at {address}"
            )
            console.print(f"\n[bold]{nodes} nodes pull straight from the origin, all at once")
            before = origin.blob_bytes_served()
            direct = await _pull_all(
                console, ref, [workdir / f"direct{i}" for i in range(nodes)], [None] * nodes
            )
            direct_bytes = origin.blob_bytes_served() - before
            for i in range(nodes):
                _check(workdir / f"direct{i}", image)
            console.print(
                f"\n[bold]a root and {nodes} agents start; each node pulls through "
                "its own agent, all at once"
            )
            async with LocalCluster(workdir / "cluster", address, agents=nodes) as cluster:
                before = origin.blob_bytes_served()
                mirrors: list[str | None] = [f"http://{a.mirror}" for a in cluster.agents]
                shoal = await _pull_all(
                    console, ref, [workdir / f"shoal{i}" for i in range(nodes)], mirrors
                )
                shoal_bytes = origin.blob_bytes_served() - before
            for i in range(nodes):
                _check(workdir / f"shoal{i}", image)
    bound = size / rate
    table = Table(
        title=f"{nodes} nodes pull {size / MiB:.0f} MiB; origin link {args.origin_mib} MiB/s"
    )
    for col in ("pull", "p50", "p95", "max", "MiB from origin", "digests"):
        table.add_column(col, justify="right" if col != "pull" else "left")
    for name, results, sent in (("direct", direct, direct_bytes), ("shoal", shoal, shoal_bytes)):
        times = [r.seconds for r in results]
        table.add_row(
            name,
            f"{statistics.median(times):.2f} s",
            f"{_p95(times):.2f} s",
            f"{max(times):.2f} s",
            f"{sent / MiB:.1f}",
            "ok",
        )
    console.print()
    console.print(table)
    cut = 100 * (1 - _p95([r.seconds for r in shoal]) / _p95([r.seconds for r in direct]))
    console.print(
        f"shoal cut the p95 pull time by {cut:.0f} % and read the origin "
        f"{shoal_bytes / size:.2f} times (one copy of the image is "
        f"{size / MiB:.1f} MiB; one copy through the origin link takes "
        f"{bound:.2f} s)."
    )
