"""The agent's data path beside the machine's limits, every figure a ratio taken in one run.

Not a test: a measurement, run by hand. Three parts, all on loopback:

1. **The machine's limits**, measured first: sha256 on one core; a ``sendfile`` ->
   ``recv_into`` + sha256 pipe between two processes (the yardstick of any verified
   sendfile path); buffered ``pwrite`` into fresh page-cache pages against ``O_DIRECT``
   (CPU ns per byte written).
2. **One cold blob** (``--size-mib``, default 512) pulled by the same client (raw socket,
   ``recv_into``, sha256 of the body, as a runtime verifies it) from a real registry
   (Debian's docker-registry, the blob in its page cache), one mode after the other in
   each run so that machine noise hits every mode alike:

   - ``direct``: from the registry;
   - ``nginx``: through Debian's nginx as a plain relay (``proxy_buffering off``, one
     process, ``master_process off``), the yardstick for a relay;
   - ``relay``: through a ``shoal agent`` without a store (``CacheConfig.path: ""``);
   - ``store``: through a ``shoal agent`` with a piece store holding nothing of the blob
     (the default ``aioEnable: 0``; a fresh agent that pulled a 64 MiB warm-up blob
     first, as a node's agent always has); ``warm``: the same agent again;
     ``store-new``: a just-started agent straight to the blob (its first buffers and
     pages are part of the figure);
   - ``store-aio``, ``store-aio-new``: the same with ``aioEnable: 1``.

   For each: the pull time, its ratio to ``direct`` and to ``nginx``, and the relaying
   process's CPU (user + system, from ``/proc/PID/stat``) per byte, its idle and peak RSS.
3. **A small image** (``--small-layers`` x ``--small-mib``, default 5 x 2 MiB) copied by
   skopeo, per run through a fresh agent with an empty store: ``direct`` from the
   registry; ``cold-new``: an image through the new agent process; ``cold``: another
   image through that (now running) agent, none of it stored; ``warm``: the same
   again. And how many requests the origin answered in each (from its own log): the
   agent's extra origin requests. A node's agent runs for days, so ``cold`` (a cold
   store) is the common case; ``cold-new`` adds what a just-started process pays
   (first connections, first buffers).

CPU seconds come from the kernel's accounting of each process, which load on a shared
machine distorts far less than wall time; the medians of ``--runs`` are printed.

    .venv/bin/python bench/datapath.py                   # 512 MiB, 3 runs
    .venv/bin/python bench/datapath.py --size-mib 1024   # the memory figure of issue 13
    .venv/bin/python bench/datapath.py --size-mib 128 --runs 1 --small-runs 3   # quick
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import mmap
import os
import platform
import shutil
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import yaml

from shoal.bench.modes.base import registries_conf
from shoal.cache import choose_piece_size
from shoal.lab.image import build_image, push_image
from shoal.lab.origin import OriginRegistry
from shoal.lab.ports import free_port
from shoal.lab.process import stop_process

MiB = 1 << 20
PIECE = 4 * MiB
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def status_kib(pid: int, key: str) -> int:
    """A ``/proc/PID/status`` figure in KiB (``VmRSS``, ``VmHWM``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


# -- 1. the machine's limits -------------------------------------------------------------


def sha256_ns_per_byte(total: int = 1 << 30) -> float:
    buf = os.urandom(PIECE)
    start = time.thread_time()
    for _ in range(total // PIECE):
        hashlib.sha256(buf).digest()
    return (time.thread_time() - start) / total * 1e9


def _sendfile_child(path: str, port_w: int) -> None:
    """Child: accept one connection and sendfile ``path`` to it piece by piece."""
    with socket.create_server(("127.0.0.1", 0)) as srv:
        os.write(port_w, f"{srv.getsockname()[1]}\n".encode())
        conn, _ = srv.accept()
        with conn, open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            offset = 0
            while offset < size:
                offset += os.sendfile(conn.fileno(), fh.fileno(), offset, size - offset)


def sendfile_pipe_rate(path: Path, size: int) -> float:
    """sendfile -> recv_into + sha256 per piece between two processes, bytes/s."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(r)
        try:
            _sendfile_child(str(path), w)
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as rf:
        port = int(rf.readline())
    buf = memoryview(mmap.mmap(-1, PIECE))
    with socket.create_connection(("127.0.0.1", port)) as sock:
        start = time.perf_counter()
        got = 0
        while got < size:
            want = min(PIECE, size - got)
            filled = 0
            while filled < want:
                n = sock.recv_into(buf[filled:want])
                if not n:
                    raise SystemExit("sendfile child went away")
                filled += n
            hashlib.sha256(buf[:want]).digest()
            got += want
        seconds = time.perf_counter() - start
    os.waitpid(pid, 0)
    return size / seconds


def write_ns_per_byte(directory: Path, size: int, direct: bool) -> float:
    """CPU per byte of writing ``size`` fresh bytes, buffered or O_DIRECT."""
    path = directory / f"write-test-{int(direct)}"
    buf = memoryview(mmap.mmap(-1, PIECE))
    buf[:] = os.urandom(PIECE)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | (os.O_DIRECT if direct else 0))
    try:
        os.ftruncate(fd, size)
        r0 = os.times()
        for offset in range(0, size, PIECE):
            os.pwrite(fd, buf, offset)
        r1 = os.times()
    finally:
        os.close(fd)
        path.unlink()
    return ((r1.user - r0.user) + (r1.system - r0.system)) / size * 1e9


# -- the client --------------------------------------------------------------------------


def http_get(port: int, path: str) -> tuple[float, str, int]:
    """GET on 127.0.0.1:``port`` with a raw socket; (seconds, sha256 hex, body bytes)."""
    buf = memoryview(bytearray(PIECE))
    start = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(65536)
            if not chunk:
                raise SystemExit(f"no answer from port {port}")
            head += chunk
        header, _, body = head.partition(b"\r\n\r\n")
        lines = header.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        if status != 200:
            raise SystemExit(f"GET {path} on port {port}: HTTP {status}")
        length = next(
            int(v)
            for k, _, v in (x.partition(":") for x in lines[1:])
            if k.lower() == "content-length"
        )
        h = hashlib.sha256(body)
        got = len(body)
        while got < length:
            n = sock.recv_into(buf)
            if not n:
                break
            h.update(buf[:n])
            got += n
    return time.perf_counter() - start, h.hexdigest(), got


# -- relays ------------------------------------------------------------------------------


NGINX_CONF = """\
daemon off;
master_process off;
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {work}/body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
    upstream origin {{ server {origin}; keepalive 8; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://origin;
            proxy_buffering off;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
        }}
    }}
}}
"""


def nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else "")
    if not found:
        raise SystemExit(
            "bench/datapath.py: nginx is not installed (apt-get install nginx), or pass --no-nginx"
        )
    return found


@dataclass
class Proc:
    proc: asyncio.subprocess.Process
    port: int

    @property
    def pid(self) -> int:
        return self.proc.pid


async def wait_port(port: int, path: str = "/v2/", limit_s: float = 30.0) -> None:
    deadline = time.monotonic() + limit_s
    async with aiohttp.ClientSession() as s:
        while True:
            try:
                async with s.get(f"http://127.0.0.1:{port}{path}") as r:
                    await r.read()
                    return
            except aiohttp.ClientError:
                if time.monotonic() > deadline:
                    raise SystemExit(f"nothing answers on port {port}") from None
                await asyncio.sleep(0.05)


def nginx_conf(work: Path, origin: str, port: int) -> Path:
    work.mkdir(parents=True, exist_ok=True)
    conf = work / "nginx.conf"
    conf.write_text(NGINX_CONF.format(work=work, origin=origin, port=port))
    return conf


@contextlib.asynccontextmanager
async def nginx(work: Path, origin: str) -> AsyncIterator[Proc]:
    port = free_port()
    conf = nginx_conf(work, origin, port)
    proc = await asyncio.create_subprocess_exec(
        nginx_binary(), "-p", str(work), "-c", str(conf), "-e", str(work / "nginx-error.log"),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        await wait_port(port)
        yield Proc(proc, port)
    finally:
        await stop_process(proc)


@contextlib.asynccontextmanager
async def agent(
    work: Path, origin: str, cache: str, aio: int = 0, piece: int = 0
) -> AsyncIterator[Proc]:
    port = free_port()
    cfg = work / f"agent-{port}.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "DeployConfig": {"logAudit": False},
                "ExporterConfig": {"enable": False},
                "ProxyConfig": {"listen": "127.0.0.1", "port": port},
                "CacheConfig": {
                    "path": cache,
                    "aioEnable": aio,
                    "capacity": 8 << 30,
                    "pieceSize": piece,
                },
                "UpstreamConfig": {
                    "default": origin,
                    "registries": [{"host": origin, "plainHTTP": True}],
                },
            }
        )
    )
    log = os.environ.get("SHOAL_BENCH_AGENT_LOG")  # a file for the agents' logs
    out = open(log, "ab") if log else None  # noqa: SIM115, ASYNC230 - closed below
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "shoal", "agent", "--config", str(cfg),
            stdout=asyncio.subprocess.DEVNULL, stderr=out or asyncio.subprocess.DEVNULL,
        )  # fmt: skip
    finally:
        if out is not None:
            out.close()
    try:
        await wait_port(port)
        yield Proc(proc, port)
    finally:
        await stop_process(proc)


# -- 2. one big blob ---------------------------------------------------------------------


@dataclass
class Sample:
    seconds: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)  # the relaying process, seconds
    idle_rss: list[int] = field(default_factory=list)  # KiB
    peak_rss: list[int] = field(default_factory=list)  # KiB


async def pull(proc: Proc | None, port: int, path: str, digest: str, sample: Sample) -> None:
    c0 = cpu_seconds(proc.pid) if proc is not None else 0.0
    seconds, got, _ = await asyncio.to_thread(http_get, port, path)
    if f"sha256:{got}" != digest:
        raise SystemExit(f"port {port} served the wrong bytes for {digest}")
    sample.seconds.append(seconds)
    if proc is not None:
        sample.cpu.append(cpu_seconds(proc.pid) - c0)
        sample.peak_rss.append(status_kib(proc.pid, "VmHWM"))


async def big_blob(work: Path, args: argparse.Namespace) -> tuple[int, dict[str, Sample]]:
    """Per run: direct, nginx, relay; then for each ``aioEnable`` a fresh agent: a
    warm-up blob first (``store``: a running agent, nothing of the big blob stored),
    the big blob, again (``warm``); and another fresh agent straight to the big blob
    (``-new``: what a just-started process pays besides: first buffers, first pages)."""
    image = build_image(work / "big", repo="bench/big", layer_sizes=[args.size_mib * MiB])
    warmup = build_image(work / "warm", repo="bench/warm", layer_sizes=[64 * MiB], seed=7)
    layer, other = image.layers[0], warmup.layers[0]
    piece = choose_piece_size(layer.size)  # the warm-up is cut alike: its buffers are reused
    path = f"/v2/{image.repo}/blobs/{layer.digest}"
    modes = ["direct", *([] if args.no_nginx else ["nginx"]), "relay"]
    modes += ["store", "store-new", "warm", "store-aio", "store-aio-new"]
    if args.modes:
        modes = [m for m in modes if m in args.modes.split(",") or m == "direct"]
    samples = {m: Sample() for m in modes}
    async with OriginRegistry(work / "origin-big") as origin:
        await push_image(origin.url, image)
        await push_image(origin.url, warmup)
        ns = f"{path}?ns={origin.address}"
        warm_ns = f"/v2/{warmup.repo}/blobs/{other.digest}?ns={origin.address}"
        async with contextlib.AsyncExitStack() as stack:
            relay = await stack.enter_async_context(agent(work, origin.address, ""))
            ngx = None
            if not args.no_nginx:
                ngx = await stack.enter_async_context(nginx(work / "nginx", origin.address))
            await asyncio.to_thread(http_get, origin.port, path)  # into the page cache
            for run in range(args.runs):
                await pull(None, origin.port, path, layer.digest, samples["direct"])
                if ngx is not None and "nginx" in samples:
                    await pull(ngx, ngx.port, path, layer.digest, samples["nginx"])
                if "relay" in samples:
                    await pull(relay, relay.port, ns, layer.digest, samples["relay"])
                for mode, aio in (("store", 0), ("store-aio", 1)):
                    for fresh_mode in (mode, mode + "-new"):
                        if fresh_mode not in samples:
                            continue
                        cache = work / f"cache-{fresh_mode}-{run}"
                        async with agent(work, origin.address, str(cache), aio, piece) as a:
                            await asyncio.sleep(1.0)
                            samples[fresh_mode].idle_rss.append(status_kib(a.pid, "VmRSS"))
                            if fresh_mode == mode:
                                await asyncio.to_thread(http_get, a.port, warm_ns)
                            await pull(a, a.port, ns, layer.digest, samples[fresh_mode])
                            if fresh_mode == "store" and "warm" in samples:
                                await pull(a, a.port, ns, layer.digest, samples["warm"])
                        shutil.rmtree(cache, ignore_errors=True)
                line = ", ".join(
                    f"{m} {s.seconds[-1]:.3f} s" + (f" ({s.cpu[-1]:.2f} s CPU)" if s.cpu else "")
                    for m, s in samples.items()
                )
                print(f"  run {run + 1}: {line}", flush=True)
    return layer.size, samples


# -- 3. a small image through skopeo ------------------------------------------------------


async def skopeo(work: Path, ref: str, mirror: str | None, tag: str) -> float:
    registry = ref.split("/", 1)[0]
    conf = work / f"registries-{tag}.conf"
    conf.write_text(registries_conf(registry, mirror))
    dest = work / f"oci-{tag}"
    shutil.rmtree(dest, ignore_errors=True)
    argv = [
        "skopeo", "--insecure-policy", "--registries-conf", str(conf), "--tmpdir", str(work),
        "copy", "--retry-times", "0", "--src-tls-verify=false",
        f"docker://{ref}", f"oci:{dest}:latest",
    ]  # fmt: skip
    start = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    _, err = await proc.communicate()
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"skopeo failed: {err.decode(errors='replace')[-400:]}")
    shutil.rmtree(dest, ignore_errors=True)
    return seconds


SMALL_MODES = ("direct", "cold", "cold-new", "warm")


async def small_image(
    work: Path, args: argparse.Namespace
) -> tuple[dict[str, list[float]], dict[str, list[int]]]:
    """Per run, a fresh agent (empty store): image A through it (``cold-new``: a new
    process too), image B (``cold``: a running agent, nothing of B stored), B again
    (``warm``); ``direct`` pulls B from the registry."""
    shape = [args.small_mib * MiB] * args.small_layers
    first = build_image(work / "small-a", repo="bench/small-a", layer_sizes=shape, seed=11)
    image = build_image(work / "small-b", repo="bench/small-b", layer_sizes=shape, seed=12)
    times: dict[str, list[float]] = {m: [] for m in SMALL_MODES}
    requests: dict[str, list[int]] = {m: [] for m in SMALL_MODES}
    async with OriginRegistry(work / "origin-small") as origin:
        refs = {}
        for img in (first, image):
            await push_image(origin.url, img)
            refs[img.repo] = f"{origin.address}/{img.repo}:{img.tag}"
            await skopeo(work, refs[img.repo], None, "prime")

        async def timed(mode: str, ref: str, mirror: str | None) -> None:
            await asyncio.sleep(0.3)  # the registry logs a request after answering it
            n0 = len(origin.served())
            times[mode].append(await skopeo(work, ref, mirror, mode))
            await asyncio.sleep(0.3)
            requests[mode].append(len(origin.served()) - n0)

        for run in range(args.small_runs):
            await timed("direct", refs[image.repo], None)
            cache = work / f"cache-small-{run}"
            async with agent(work, origin.address, str(cache)) as fresh:
                mirror = f"127.0.0.1:{fresh.port}"
                await timed("cold-new", refs[first.repo], mirror)
                await timed("cold", refs[image.repo], mirror)
                await timed("warm", refs[image.repo], mirror)
            shutil.rmtree(cache, ignore_errors=True)
            print(
                f"  run {run + 1}: "
                + ", ".join(
                    f"{m} {times[m][-1]:.3f} s ({requests[m][-1]} origin requests)" for m in times
                ),
                flush=True,
            )
    return times, requests


# -- main --------------------------------------------------------------------------------


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


async def amain(args: argparse.Namespace) -> None:
    print(
        f"machine: {os.cpu_count()} cores, {platform.system()} {platform.release()}, Python "
        f"{platform.python_version()}, load average {os.getloadavg()[0]:.1f}; "
        f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="shoal-datapath-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        os.chmod(work, 0o755)
        size = args.size_mib * MiB
        print("limits:", flush=True)
        sha = sha256_ns_per_byte()
        print(f"  sha256, one core                 {sha:5.2f} ns/B  ({1 / sha:.2f} GB/s)")
        blob = work / "pipe-blob"
        with blob.open("wb") as fh:
            chunk = os.urandom(PIECE)
            for _ in range(size // PIECE):
                fh.write(chunk)
        pipe = max(sendfile_pipe_rate(blob, size) for _ in range(2))
        blob.unlink()
        print(f"  sendfile -> recv_into + sha256   {pipe / 1e9:5.2f} GB/s (2 processes, best of 2)")
        await asyncio.sleep(4)  # pages freed above are reported to the host again: fresh
        buffered = write_ns_per_byte(work, size, direct=False)
        direct = write_ns_per_byte(work, size, direct=True)
        print(f"  write, buffered into fresh pages {buffered:5.2f} ns/B CPU")
        print(f"  write, O_DIRECT                  {direct:5.2f} ns/B CPU", flush=True)

        if not args.no_big:
            print(f"one cold blob of {args.size_mib} MiB, {args.runs} run(s):", flush=True)
            nbytes, samples = await big_blob(work, args)
            d = med(samples["direct"].seconds)
            ref = samples.get("nginx")
            n = med(ref.seconds) if ref is not None else float("nan")
            print(f"median of {args.runs}:")
            cols = ("time s", "MiB/s", "/direct", "/nginx", "CPU ns/B", "idle RSS", "peak RSS")
            widths = (7, 6, 8, 7, 9, 9, 9)
            print(
                f"  {'mode':9} " + " ".join(f"{c:>{w}}" for c, w in zip(cols, widths, strict=True))
            )
            for mode, s in samples.items():
                t = med(s.seconds)
                cpu = f"{med(s.cpu) / nbytes * 1e9:9.2f}" if s.cpu else f"{'':9}"
                idle = (
                    f"{med([float(x) for x in s.idle_rss]) / 1024:6.0f} MiB"
                    if s.idle_rss
                    else f"{'':9}"
                )
                peak = (
                    f"{med([float(x) for x in s.peak_rss]) / 1024:6.0f} MiB"
                    if s.peak_rss
                    else f"{'':9}"
                )
                rate = nbytes / MiB / t
                print(
                    f"  {mode:9} {t:7.3f} {rate:6.0f} {t / d:8.3f} {t / n:7.3f} {cpu} {idle} {peak}"
                )
        if not args.no_small:
            print(
                f"a small image, {args.small_layers} x {args.small_mib} MiB, skopeo, "
                f"{args.small_runs} run(s):",
                flush=True,
            )
            times, requests = await small_image(work, args)
            d = med(times["direct"])
            for mode in times:
                t = med(times[mode])
                print(
                    f"  {mode:6} {t:.3f} s  {t / d:.2f}x direct  origin requests "
                    f"{med([float(x) for x in requests[mode]]):.0f}"
                )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=512, help="the big blob, MiB (default 512)")
    ap.add_argument("--runs", type=int, default=3, help="runs of the big blob (default 3)")
    ap.add_argument("--small-layers", type=int, default=5)
    ap.add_argument("--small-mib", type=int, default=2)
    ap.add_argument("--small-runs", type=int, default=5)
    ap.add_argument("--no-nginx", action="store_true", help="leave out the nginx relay")
    ap.add_argument("--modes", default="", help="only these modes of the big blob (comma list)")
    ap.add_argument("--no-big", action="store_true", help="leave out the big blob")
    ap.add_argument("--no-small", action="store_true", help="leave out the small image")
    asyncio.run(amain(ap.parse_args()))


if __name__ == "__main__":
    main()
