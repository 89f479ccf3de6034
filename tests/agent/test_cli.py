"""``shoal agent`` as a user runs it: a process, a config file, signals, one-line errors."""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import aiohttp
import pytest

from shoal.lab.ports import free_port


def has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@contextmanager
def own_store(args: tuple[str, ...]) -> Iterator[tuple[str, ...]]:
    """An agent run without ``--config`` gets one naming a store of its own: the default
    (/dadi-p2p/cache) must not appear on the machine running the tests."""
    if "--config" in args or "agent" not in args:
        yield args
        return
    with tempfile.TemporaryDirectory(prefix="shoal-cli-") as tmp:
        cfg = Path(tmp) / "agent.yaml"
        cfg.write_text(f"CacheConfig:\n  path: {tmp}/cache\n")
        at = args.index("agent") + 1
        yield (*args[:at], "--config", str(cfg), *args[at:])


async def shoal(*args: str) -> tuple[int, str]:
    with own_store(args) as argv:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "shoal",
            *argv,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, err.decode()


@asynccontextmanager
async def running_agent(*args: str) -> AsyncIterator[asyncio.subprocess.Process]:
    with own_store(("agent", *args)) as argv:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "shoal",
            *argv,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            yield proc
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                await asyncio.wait_for(proc.wait(), 10)


async def wait_http(url: str) -> int:
    async with aiohttp.ClientSession() as s:
        for _ in range(200):
            try:
                async with s.get(url) as r:
                    return r.status
            except aiohttp.ClientError:
                await asyncio.sleep(0.05)
    raise AssertionError(f"{url} never answered")


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("DeployConfig:\n  mode: agent\n  logAuditMod: file\n", "DeployConfig.logAuditMod"),
        ("ProxyConfig:\n  port: -1\n", "ProxyConfig.port"),
        ("CacheConfig:\n  capacity: lots\n", "CacheConfig.capacity"),
        ("DeployConfig:\n  mode: root\n", "DeployConfig.mode"),
        ("[not, a, mapping\n", "line"),
    ],
)
async def test_bad_config_is_one_line_and_exit_2(tmp_path: Path, text: str, needle: str) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    code, err = await shoal("agent", "--config", str(cfg))
    assert code == 2
    assert needle in err
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


async def test_missing_config_file_and_bad_flags(tmp_path: Path) -> None:
    code, err = await shoal("agent", "--config", str(tmp_path / "nope.yaml"))
    assert code == 2
    assert "cannot read" in err
    code, err = await shoal("agent", "--listen", "not-an-ip")
    assert code == 2
    assert "not an IP address" in err


async def test_port_in_use_is_a_clear_error() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, err = await shoal(
            "agent", "--listen", "127.0.0.1", "--proxy-port", str(port), "--exporter-port", "0"
        )
    assert code == 2
    assert f"cannot listen on port {port}" in err
    assert "Traceback" not in err


async def test_agent_serves_until_sigterm_and_exits_cleanly(tmp_path: Path) -> None:
    port = free_port()
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(
        "DeployConfig:\n  mode: agent\nExporterConfig:\n  enable: false\n"
        f"CacheConfig:\n  path: {tmp_path / 'cache'}\n"
    )
    async with running_agent(
        "--config", str(cfg), "--listen", "127.0.0.1", "--proxy-port", str(port)
    ) as proc:
        assert await wait_http(f"http://127.0.0.1:{port}/v2/") == 200
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0


@pytest.mark.skipif(not has_ipv6(), reason="no IPv6 on this host")
async def test_default_listener_is_dual_stack() -> None:
    port, exporter = free_port(), free_port()
    async with running_agent("--proxy-port", str(port), "--exporter-port", str(exporter)):
        assert await wait_http(f"http://127.0.0.1:{port}/v2/") == 200
        assert await wait_http(f"http://[::1]:{port}/v2/") == 200
        assert await wait_http(f"http://[::1]:{exporter}/metrics") == 200


@pytest.mark.skipif(not has_ipv6(), reason="no IPv6 on this host")
async def test_ipv6_only_listener() -> None:
    port = free_port("::1")
    async with running_agent("--listen", "::1", "--proxy-port", str(port), "--exporter-port", "0"):
        assert await wait_http(f"http://[::1]:{port}/v2/") == 200
