"""Cold pull of one large blob: straight from the registry vs through a shoal agent.

Not a test: a measurement, run by hand. All pulls use the same client (aiohttp, body
hashed as it arrives, as a runtime verifies it) against the same real registry
(Debian's docker-registry, blob in the page cache after a first read), one after the
other within each run so that machine noise hits every mode alike:

- ``direct``: from the registry;
- ``relay``: through an agent with no store (``CacheConfig.path: ""``), which hashes the
  stream and holds the last chunk until the digest matches;
- ``store``: through an agent with a piece store, cold: a fresh agent process with an
  empty store each run (fetch from the origin piece by piece, hash each piece, store it,
  stream it to the client from the store, hash the whole blob on the way out).

The agents are real ``shoal agent`` processes. Prints each run, the medians, the
agents' CPU per pull and the ratios to ``direct``.

    .venv/bin/python bench/mirror_overhead.py --size-mib 1024 --runs 5
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import yaml

from shoal.lab.image import build_image, push_image
from shoal.lab.origin import OriginRegistry
from shoal.lab.ports import free_port
from shoal.lab.process import stop_process

MiB = 1 << 20


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def timed_get(session: aiohttp.ClientSession, url: str, params: dict[str, str]) -> float:
    start = time.perf_counter()
    h = hashlib.sha256()
    async with session.get(url, params=params) as resp:
        resp.raise_for_status()
        async for chunk in resp.content.iter_chunked(4 * MiB):
            h.update(chunk)
    return time.perf_counter() - start


async def start_agent(
    work: Path, origin: str, cache: str
) -> tuple[asyncio.subprocess.Process, int]:
    port = free_port()
    cfg = work / f"agent-{port}.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "ExporterConfig": {"enable": False},
                "ProxyConfig": {"listen": "127.0.0.1", "port": port},
                "CacheConfig": {"path": cache},
                "UpstreamConfig": {
                    "default": origin,
                    "registries": [{"host": origin, "plainHTTP": True}],
                },
            }
        )
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "shoal",
        "agent",
        "--config",
        str(cfg),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    async with aiohttp.ClientSession() as s:
        for _ in range(400):
            try:
                async with s.get(f"http://127.0.0.1:{port}/v2/"):
                    return proc, port
            except aiohttp.ClientError:
                await asyncio.sleep(0.05)
    raise RuntimeError("agent did not start")


async def main(size_mib: int, runs: int) -> None:
    with tempfile.TemporaryDirectory(prefix="shoal-bench-") as tmp:
        work = Path(tmp)
        image = build_image(work / "img", repo="bench/big", layer_sizes=[size_mib * MiB])
        layer = image.layers[0]
        times: dict[str, list[float]] = {"direct": [], "relay": [], "store": []}
        cpu: dict[str, list[float]] = {"relay": [], "store": []}
        async with OriginRegistry(work / "origin") as origin:
            await push_image(origin.url, image)
            path = f"/v2/{image.repo}/blobs/{layer.digest}"
            ns = {"ns": origin.address}
            relay, relay_port = await start_agent(work, origin.address, "")
            timeout = aiohttp.ClientTimeout(total=None, sock_read=120)
            try:
                async with aiohttp.ClientSession(timeout=timeout) as s:
                    await timed_get(s, origin.url + path, {})  # warm the page cache
                    for i in range(runs):
                        times["direct"].append(await timed_get(s, origin.url + path, {}))
                        c0 = cpu_seconds(relay.pid)
                        url = f"http://127.0.0.1:{relay_port}{path}"
                        times["relay"].append(await timed_get(s, url, ns))
                        cpu["relay"].append(cpu_seconds(relay.pid) - c0)
                        cache = work / f"cache{i}"
                        agent, port = await start_agent(work, origin.address, str(cache))
                        try:
                            c0 = cpu_seconds(agent.pid)
                            url = f"http://127.0.0.1:{port}{path}"
                            times["store"].append(await timed_get(s, url, ns))
                            cpu["store"].append(cpu_seconds(agent.pid) - c0)
                        finally:
                            await stop_process(agent)
                        parts = [f"direct {times['direct'][-1]:.3f} s"] + [
                            f"{m} {times[m][-1]:.3f} s (agent CPU {cpu[m][-1]:.2f} s)"
                            for m in ("relay", "store")
                        ]
                        print(f"run {i + 1}: " + ", ".join(parts), flush=True)
            finally:
                await stop_process(relay)
    size = layer.size / MiB
    d = statistics.median(times["direct"])
    print(f"blob {size:.0f} MiB, median of {runs}, {os.cpu_count()} cores:")
    for mode in ("direct", "relay", "store"):
        m = statistics.median(times[mode])
        line = f"  {mode:6} {m:.3f} s ({size / m:.0f} MiB/s)"
        if mode != "direct":
            line += f", agent CPU {statistics.median(cpu[mode]):.2f} s, ratio {m / d:.3f}"
        print(line)
    print("ratio = agent time / direct time; goal <= 1.10")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    ns = parser.parse_args()
    asyncio.run(main(ns.size_mib, ns.runs))
