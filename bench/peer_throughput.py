"""How close does shoal's peer path come to the machine's limits? One run, three numbers.

(a) raw TCP between two processes on loopback (plain sockets, 1 MiB buffers),
(b) sha256 on one core (every piece is verified, so this bounds a verified path),
(c) shoal moving one blob piece by piece from a seed process's piece store to a leech
    process's piece store over the peer protocol: sendfile on the seed, receive in
    place, sha256 verified against the seed's piece hashes, written to the leech's store.

It prints ``ratio = (c) / (e)``, where (e) is a ``sendfile`` -> ``recv_into`` + sha256
pipe between two processes (the limit of any verified sendfile path on this machine),
the older ``(c) / min(a, b)``, the CPU per byte of both processes, and the leech's peak
RSS (memory stays bounded by ``in-flight x piece size`` whatever the blob size).

    .venv/bin/python bench/peer_throughput.py                 # 2 GiB, as in docs/peer.md
    .venv/bin/python bench/peer_throughput.py --size 256M     # a quick run
    .venv/bin/python bench/peer_throughput.py --tls           # and over TLS
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import platform
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from shoal.cache import BufferPool, PieceStore, aligned_buffer, choose_piece_size
from shoal.peer import PeerClient, PeerServer
from shoal.peer.tls import PeerTLS, contexts

SECRET = b"bench secret"
CHUNK = 1 << 20
_UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def parse_size(text: str) -> int:
    text = text.strip().upper().removesuffix("IB").removesuffix("B")
    if text and text[-1] in _UNITS:
        return int(float(text[:-1]) * _UNITS[text[-1]])
    return int(text)


def say(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


# -- (a) raw TCP ------------------------------------------------------------------------


def tcp_sink(size: int) -> None:
    with socket.create_server(("127.0.0.1", 0)) as srv:
        say({"port": srv.getsockname()[1]})
        conn, _ = srv.accept()
        with conn:
            buf = memoryview(bytearray(CHUNK))
            got = 0
            while got < size:
                n = conn.recv_into(buf, min(CHUNK, size - got))
                if not n:
                    raise SystemExit("sender went away")
                got += n
            conn.sendall(b"k")


def measure_tcp(size: int) -> float:
    child = _spawn(["--role", "tcp-sink", "--size", str(size)])
    try:
        port = _read_json(child)["port"]
        payload = memoryview(os.urandom(CHUNK))
        with socket.create_connection(("127.0.0.1", port)) as sock:
            start = time.perf_counter()
            sent = 0
            while sent < size:
                n = min(CHUNK, size - sent)
                sock.sendall(payload[:n])
                sent += n
            if sock.recv(1) != b"k":
                raise SystemExit("sink did not acknowledge")
            return size / (time.perf_counter() - start)
    finally:
        child.wait(timeout=60)


def sendfile_source(path: Path, size: int, piece: int) -> None:
    """Serve ``path`` with ``loop.sendfile`` piece by piece, as the peer server does."""

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        class Source(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                assert isinstance(transport, asyncio.Transport)
                self.task = loop.create_task(self.send(transport))

            async def send(self, transport: asyncio.Transport) -> None:
                with path.open("rb") as fh:
                    for offset in range(0, size, piece):
                        await loop.sendfile(transport, fh, offset, min(piece, size - offset))
                done.set_result(None)

        server = await loop.create_server(Source, "127.0.0.1", 0)
        say({"port": server.sockets[0].getsockname()[1]})
        await done
        server.close()

    asyncio.run(serve())


def measure_sendfile(path: Path, size: int, piece: int, *, verify: bool = False) -> float:
    """sendfile in pieces to a plain reader (``recv_into`` a reused page-aligned buffer);
    with ``verify`` the reader hashes each piece too: the limit of a verified sendfile
    path, and the yardstick of (c)."""
    child = _spawn(
        [
            "--role",
            "sendfile-source",
            "--dir",
            str(path),
            "--size",
            str(size),
            "--piece-size",
            str(piece),
        ]
    )
    try:
        port = _read_json(child)["port"]
        with socket.create_connection(("127.0.0.1", port)) as sock:
            buf = aligned_buffer(piece)
            start = time.perf_counter()
            got = 0
            while got < size:
                want = min(piece, size - got)
                filled = 0
                while filled < want:
                    n = sock.recv_into(buf[filled:want])
                    if not n:
                        raise SystemExit("sendfile source went away")
                    filled += n
                if verify:
                    hashlib.sha256(buf[:want]).digest()
                got += want
            return size / (time.perf_counter() - start)
    finally:
        child.wait(timeout=60)


def tls_source(path: Path, size: int, piece: int, tls_dir: str) -> None:
    """Child: one TLS connection (blocking ``ssl`` socket), the file piece by piece: read
    into a reused buffer, ``sendall``."""
    tls = tls_of(tls_dir)
    assert tls is not None
    with socket.create_server(("127.0.0.1", 0)) as srv:
        say({"port": srv.getsockname()[1]})
        raw, _ = srv.accept()
        with tls.server.wrap_socket(raw, server_side=True) as conn, path.open("rb") as fh:
            buf = aligned_buffer(piece)
            for offset in range(0, size, piece):
                n = os.preadv(fh.fileno(), [buf[: min(piece, size - offset)]], offset)
                conn.sendall(buf[:n])
            conn.recv(1)


def measure_tls_loop(path: Path, size: int, piece: int, tls_dir: str) -> float:
    """(f) the same TLS stack (Python's ``ssl``, OpenSSL) in a plain socket loop between two
    processes, the reader hashing each piece: the yardstick of (c) over TLS."""
    child = _spawn(
        ["--role", "tls-source", "--dir", str(path), "--size", str(size),
         "--piece-size", str(piece), "--tls-dir", tls_dir]
    )  # fmt: skip
    tls = tls_of(tls_dir)
    assert tls is not None
    try:
        port = _read_json(child)["port"]
        raw = socket.create_connection(("127.0.0.1", port))
        with tls.client.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
            buf = aligned_buffer(piece)
            start = time.perf_counter()
            got = 0
            while got < size:
                want = min(piece, size - got)
                filled = 0
                while filled < want:
                    n = sock.recv_into(buf[filled:want])
                    if not n:
                        raise SystemExit("TLS source went away")
                    filled += n
                hashlib.sha256(buf[:want]).digest()
                got += want
            seconds = time.perf_counter() - start
            sock.sendall(b"k")
            return size / seconds
    finally:
        child.wait(timeout=60)


# -- (b) sha256 -------------------------------------------------------------------------


def measure_sha256(size: int, piece: int) -> float:
    buf = os.urandom(piece)
    rounds = max(size // piece, 1)
    start = time.perf_counter()
    for _ in range(rounds):
        hashlib.sha256(buf).digest()
    return rounds * piece / (time.perf_counter() - start)


# -- (c) shoal, seed process and leech process -----------------------------------------


def blob_pieces(size: int, piece: int) -> list[bytes]:
    """Distinct, incompressible pieces without generating ``size`` random bytes."""
    base = os.urandom(64 << 20)
    out: list[bytes] = []
    for i in range((size + piece - 1) // piece):
        length = min(piece, size - i * piece)
        start = (i * 7919 * 4096) % (len(base) - length + 1)
        out.append(i.to_bytes(8, "big") + base[start + 8 : start + length])
    return out


def tls_files(directory: Path) -> tuple[str, str, str]:
    """A CA and one certificate for both ends (as a cluster shares one), made once."""
    import trustme

    paths = tuple(str(directory / n) for n in ("peer.crt", "peer.key", "ca.crt"))
    if not Path(paths[0]).exists():
        directory.mkdir(parents=True, exist_ok=True)
        ca = trustme.CA()
        cert = ca.issue_cert("shoal-peer")
        cert.cert_chain_pems[0].write_to_path(paths[0])
        cert.private_key_pem.write_to_path(paths[1])
        ca.cert_pem.write_to_path(paths[2])
    return paths[0], paths[1], paths[2]


def tls_of(tls_dir: str) -> PeerTLS | None:
    return contexts(*tls_files(Path(tls_dir))) if tls_dir else None


async def seed(directory: Path, size: int, piece: int, aio: bool, tls_dir: str = "") -> None:
    parts = blob_pieces(size, piece)
    whole = hashlib.sha256()
    for p in parts:
        whole.update(p)
    digest = "sha256:" + whole.hexdigest()
    async with PieceStore(directory, capacity=size + piece, aio=aio) as store:
        await store.create(digest, size, piece_size=piece)
        for i, p in enumerate(parts):
            await store.write_piece(digest, i, p)
        await store.finish(digest)
        del parts
        tls = tls_of(tls_dir)
        ctx = None if tls is None else tls.server
        async with PeerServer(store, SECRET, host="127.0.0.1", node="seed", ssl=ctx) as server:
            say({"port": server.port, "digest": digest, "sendfile": server.sendfile_native})
            before = resource.getrusage(resource.RUSAGE_SELF)
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
            after = resource.getrusage(resource.RUSAGE_SELF)
            cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
            say({"cpu": cpu, "bytes_sent": server.bytes_sent})


async def leech(
    directory: Path, port: int, digest: str, in_flight: int, aio: bool, tls_dir: str = ""
) -> None:
    peer = ("127.0.0.1", port)
    tls = tls_of(tls_dir)
    ctx = None if tls is None else tls.client
    async with PeerClient(SECRET, node="leech", max_in_flight=in_flight, ssl=ctx) as client:
        await client.connection(peer)  # the handshake is not part of the transfer
        before = resource.getrusage(resource.RUSAGE_SELF)
        start = time.perf_counter()
        stat = await client.stat(peer, digest)
        assert stat.hashes is not None and all(stat.hashes)
        hashes = list(stat.hashes)
        async with PieceStore(directory, capacity=stat.size + stat.piece_size, aio=aio) as store:
            info = await store.create(digest, stat.size, piece_size=stat.piece_size)
            todo: asyncio.Queue[int] = asyncio.Queue()
            for i in range(info.piece_count):
                todo.put_nowait(i)

            pool = BufferPool()

            async def worker() -> None:
                while not todo.empty():
                    i = todo.get_nowait()
                    length = info.piece_length(i)
                    # as the agent's download does: a pooled page-aligned buffer taken
                    # when the bytes start, the piece checked against its hash and
                    # written in one disk-thread job, the buffer given back
                    view = await client.read(peer, digest, i * stat.piece_size, length, pool=pool)
                    await store.write_piece(digest, i, view, expect=hashes[i])
                    pool.give(view.obj)  # type: ignore[arg-type]

            async with asyncio.TaskGroup() as tg:
                for _ in range(in_flight):
                    tg.create_task(worker())
            await store.finish(digest, verify=False)  # every piece hash already checked
            seconds = time.perf_counter() - start
            done = store.lookup(digest)
            assert done is not None and done.complete
        usage = resource.getrusage(resource.RUSAGE_SELF)
        say(
            {
                "seconds": seconds,
                "bytes": stat.size,
                "peak_rss": _peak_rss(),
                "cpu_user": usage.ru_utime - before.ru_utime,
                "cpu_sys": usage.ru_stime - before.ru_stime,
            }
        )


def _peak_rss() -> int:
    """VmHWM of this process (``ru_maxrss`` would include the parent's, across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure_shoal(
    size: int,
    piece: int,
    in_flight: int,
    aio: bool,
    seed_aio: bool,
    workdir: Path,
    repeat: int,
    tls_dir: str = "",
) -> tuple[float, dict[str, Any], dict[str, Any]]:
    """One seed; ``repeat`` leeches one after another, each into a fresh store; the best."""
    tls = ["--tls-dir", tls_dir] if tls_dir else []
    flags = ["--piece-size", str(piece), "--aio", str(int(aio)), *tls]
    seed_flags = ["--piece-size", str(piece), "--aio", str(int(seed_aio)), *tls]
    seeder = _spawn(
        ["--role", "seed", "--size", str(size), "--dir", str(workdir / "seed"), *seed_flags],
        stdin=subprocess.PIPE,
    )
    try:
        ready = _read_json(seeder)
        best: dict[str, Any] | None = None
        for _ in range(repeat):
            shutil.rmtree(workdir / "leech", ignore_errors=True)
            leecher = _spawn(
                [
                    "--role",
                    "leech",
                    "--port",
                    str(ready["port"]),
                    "--digest",
                    ready["digest"],
                    "--in-flight",
                    str(in_flight),
                    "--dir",
                    str(workdir / "leech"),
                    *flags,
                ]
            )
            result = _read_json(leecher)
            leecher.wait(timeout=60)
            if best is None or result["seconds"] < best["seconds"]:
                best = result
    finally:
        assert seeder.stdin is not None
        seeder.stdin.close()
        assert seeder.stdout is not None
        line = seeder.stdout.readline()
        seeder.wait(timeout=60)
    assert best is not None
    if line:
        sent = json.loads(line)
        best["sender_ns_per_byte"] = sent["cpu"] / max(sent["bytes_sent"], 1) * 1e9
    return best["bytes"] / best["seconds"], ready, best


# -- plumbing ---------------------------------------------------------------------------


def _spawn(args: list[str], stdin: int | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, __file__, *args], stdout=subprocess.PIPE, stdin=stdin, text=True
    )


def _read_json(proc: subprocess.Popen[str]) -> dict[str, Any]:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        raise SystemExit(f"child {proc.args!r} exited with {proc.wait()}")
    result: dict[str, Any] = json.loads(line)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size", default="2G", help="blob size, e.g. 2G, 256M (default 2G)")
    ap.add_argument(
        "--piece-size",
        default="auto",
        help="piece size (default: what the store chooses for the blob, 16M for 1-2 GiB)",
    )
    ap.add_argument("--in-flight", type=int, default=8, help="requests in flight (default 8)")
    ap.add_argument(
        "--aio", type=int, choices=(0, 1), default=1, help="the receiver store's aioEnable"
    )
    ap.add_argument(
        "--seed-aio",
        type=int,
        choices=(0, 1),
        default=0,
        help="the seed store's aioEnable (0: its blob is in the page cache, as just fetched)",
    )
    ap.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="measure each figure N times and keep the best (for a shared, noisy machine)",
    )
    ap.add_argument("--dir", default="", help="where the two piece stores go (default: a temp dir)")
    ap.add_argument(
        "--tls",
        action="store_true",
        help="also (c) over TLS (P2PConfig.tls) against (f), the same TLS stack in a loop",
    )
    ap.add_argument("--tls-dir", default="", help=argparse.SUPPRESS)
    ap.add_argument("--role", default="main", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--digest", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    size, aio = parse_size(args.size), bool(args.aio)
    piece = choose_piece_size(size) if args.piece_size == "auto" else parse_size(args.piece_size)

    if args.role == "tcp-sink":
        return tcp_sink(size)
    if args.role == "sendfile-source":
        return sendfile_source(Path(args.dir), size, piece)
    if args.role == "tls-source":
        return tls_source(Path(args.dir), size, piece, args.tls_dir)
    if args.role == "seed":
        return asyncio.run(seed(Path(args.dir), size, piece, aio, args.tls_dir))
    if args.role == "leech":
        return asyncio.run(
            leech(Path(args.dir), args.port, args.digest, args.in_flight, aio, args.tls_dir)
        )

    workdir = Path(args.dir or tempfile.mkdtemp(prefix="shoal-bench-"))
    try:
        print(
            f"machine: {os.cpu_count()} cores, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}, stock asyncio loop"
        )
        print(
            f"blob {size} bytes, piece {piece} bytes, {args.in_flight} in flight, "
            f"aioEnable={int(aio)} (seed {args.seed_aio}), best of {args.repeat}, "
            f"stores under {workdir}"
        )
        n = args.repeat
        tcp = max(measure_tcp(size) for _ in range(n))
        print(f"(a) raw TCP, 2 processes, loopback   {tcp / 1e9:6.2f} GB/s")
        sha = max(measure_sha256(min(size, 1 << 30), piece) for _ in range(n))
        print(f"(b) sha256, one core                 {sha / 1e9:6.2f} GB/s")
        rate, ready, result = measure_shoal(
            size, piece, args.in_flight, aio, bool(args.seed_aio), workdir, n
        )
        print(
            f"(c) shoal store -> store, verified    {rate / 1e9:6.2f} GB/s"
            f"  ({result['seconds']:.2f} s, sendfile={ready['sendfile']}, receiver CPU "
            f"user {result['cpu_user']:.2f} s sys {result['cpu_sys']:.2f} s)"
        )
        print(f"receiver peak RSS                    {result['peak_rss'] / 2**20:6.0f} MiB")
        receiver_ns = (result["cpu_user"] + result["cpu_sys"]) / result["bytes"] * 1e9
        sender_ns = result.get("sender_ns_per_byte", float("nan"))
        print(
            f"CPU per byte moved: receiver {receiver_ns:.2f} ns, sender {sender_ns:.2f} ns "
            f"(2 cores: at best {2 / (receiver_ns + sender_ns):.2f} GB/s)"
        )
        seed_file = next((workdir / "seed" / "blobs" / "sha256").iterdir()) / "data"
        floor = max(measure_sendfile(seed_file, size, piece) for _ in range(n))
        print(f"(d) loop.sendfile alone, piece by piece {floor / 1e9:6.2f} GB/s  (for comparison)")
        # the limit is the machine's, not shoal's: the best of the read sizes
        limit = max(
            measure_sendfile(seed_file, size, chunk, verify=True)
            for chunk in sorted({1 << 20, 4 << 20, piece})
            for _ in range(n)
        )
        print(
            f"(e) sendfile -> recv_into + sha256  {limit / 1e9:6.2f} GB/s  "
            f"(the verified limit: best of 1, 4 MiB and piece-sized reads)"
        )
        print(f"ratio = (c) / (e)                    {rate / limit:6.2f}   (goal >= 0.8)")
        print(f"ratio = (c) / min(a, b)              {rate / min(tcp, sha):6.2f}")
        if args.tls:
            tls_dir = str(workdir / "tls")
            tls_files(Path(tls_dir))
            shutil.rmtree(workdir / "seed", ignore_errors=True)
            trate, _, tres = measure_shoal(
                size, piece, args.in_flight, aio, bool(args.seed_aio), workdir, n, tls_dir
            )
            t_recv = (tres["cpu_user"] + tres["cpu_sys"]) / tres["bytes"] * 1e9
            t_send = tres.get("sender_ns_per_byte", float("nan"))
            print(
                f"(c') the same over TLS                {trate / 1e9:6.2f} GB/s  "
                f"(CPU per byte: receiver {t_recv:.2f} ns, sender {t_send:.2f} ns)"
            )
            seed_file = next((workdir / "seed" / "blobs" / "sha256").iterdir()) / "data"
            loop_rate = max(measure_tls_loop(seed_file, size, piece, tls_dir) for _ in range(n))
            print(f"(f) TLS socket loop + sha256         {loop_rate / 1e9:6.2f} GB/s  (same stack)")
            print(f"ratio = (c') / (f)                   {trate / loop_rate:6.2f}   (goal >= 0.8)")
            print(f"TLS costs (c) {1 - trate / rate:.0%} of its throughput here")
    finally:
        if not args.dir:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
