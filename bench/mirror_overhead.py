"""Cold pull of one large blob: straight from the registry vs through a shoal agent.

Not a test: a measurement, run by hand. Both pulls use the same client (aiohttp, body
hashed as it arrives, as a runtime would verify it) against the same real registry
(Debian's docker-registry, blob on the page cache after the first read), alternating
direct and mirrored runs so that machine noise hits both alike. The agent is a real
``shoal agent`` process. Prints each run, the medians and the ratio mirrored/direct.

    .venv/bin/python bench/mirror_overhead.py --size-mib 1024 --runs 3
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


async def main(size_mib: int, runs: int) -> None:
    with tempfile.TemporaryDirectory(prefix="shoal-bench-") as tmp:
        work = Path(tmp)
        image = build_image(work / "img", repo="bench/big", layer_sizes=[size_mib * MiB])
        layer = image.layers[0]
        async with OriginRegistry(work / "origin") as origin:
            await push_image(origin.url, image)
            port = free_port()
            cfg = work / "agent.yaml"
            cfg.write_text(
                yaml.safe_dump(
                    {
                        "ExporterConfig": {"enable": False},
                        "ProxyConfig": {"listen": "127.0.0.1", "port": port},
                        "UpstreamConfig": {
                            "default": origin.address,
                            "registries": [{"host": origin.address, "plainHTTP": True}],
                        },
                    }
                )
            )
            agent = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "shoal", "agent", "--config", str(cfg)
            )
            try:
                path = f"/v2/{image.repo}/blobs/{layer.digest}"
                timeout = aiohttp.ClientTimeout(total=None, sock_read=120)
                async with aiohttp.ClientSession(timeout=timeout) as s:
                    for _ in range(100):
                        try:
                            async with s.get(f"http://127.0.0.1:{port}/v2/"):
                                break
                        except aiohttp.ClientError:
                            await asyncio.sleep(0.05)
                    await timed_get(s, origin.url + path, {})  # warm the page cache
                    direct: list[float] = []
                    mirrored: list[float] = []
                    agent_cpu: list[float] = []
                    for i in range(runs):
                        direct.append(await timed_get(s, origin.url + path, {}))
                        cpu0 = cpu_seconds(agent.pid)
                        mirror_url = f"http://127.0.0.1:{port}{path}"
                        mirrored.append(await timed_get(s, mirror_url, {"ns": origin.address}))
                        agent_cpu.append(cpu_seconds(agent.pid) - cpu0)
                        print(
                            f"run {i + 1}: direct {direct[-1]:.3f} s, "
                            f"through agent {mirrored[-1]:.3f} s "
                            f"(agent CPU {agent_cpu[-1]:.2f} s)",
                            flush=True,
                        )
            finally:
                agent.terminate()
                await agent.wait()
    size = layer.size / MiB
    d, m = statistics.median(direct), statistics.median(mirrored)
    print(
        f"blob {size:.0f} MiB, median of {runs}: direct {d:.3f} s ({size / d:.0f} MiB/s), "
        f"through agent {m:.3f} s ({size / m:.0f} MiB/s)"
    )
    print(f"agent CPU per pull (median): {statistics.median(agent_cpu):.2f} s")
    print(f"ratio {m / d:.3f} (agent time / direct time; goal <= 1.10)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    ns = parser.parse_args()
    asyncio.run(main(ns.size_mib, ns.runs))
