"""``shoal`` as a user runs it: a process, a config file, signals, one-line errors.

The last tests walk every subcommand through the ways a user gets it wrong and check
that each ends in one line and exit 2, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import signal
import socket
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from shoal.lab.ports import free_port
from tests.webhook.tlsfix import Tls, make_tls


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
    assert f"cannot listen on 127.0.0.1:{port}: address already in use" in err
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


# --- every subcommand through bad input --------------------------------------------

#: a line of the process's own log (``setup_logging``'s text format), not an error line
LOG_LINE = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2},\d{3} [A-Z]+ ")


@dataclass(frozen=True)
class Bad:
    """One way a user gets a subcommand wrong, and words the one-line answer must hold."""

    argv: tuple[str, ...]
    needle: str


def bad_inputs(tmp: Path, busy: int, tls: Tls) -> list[Bad]:
    a_file = tmp / "a-file"
    a_file.write_text("")
    store = f"CacheConfig:\n  path: {tmp / 'store'}\n"
    agent = tmp / "agent.yaml"
    agent.write_text(store)
    # the control API's TLS files (on by default), so the roles get as far as listening
    ca_file = tmp / "ca.crt"
    tls.ca.cert_pem.write_to_path(str(ca_file))
    control = (
        f"ControlConfig:\n  caFile: {ca_file}\n  certFile: {tls.cert_file}\n"
        f"  keyFile: {tls.key_file}\n"
    )
    swarm = tmp / "swarm.yaml"
    swarm.write_text(
        store + control + "P2PConfig:\n  roots: [127.0.0.1:1]\n  secret: 0123456789abcdef0\n"
    )
    root = tmp / "root.yaml"
    root.write_text(
        f"DeployConfig:\n  mode: root\n{store}{control}P2PConfig:\n  secret: 0123456789abcdef0\n"
    )
    logdir = tmp / "logdir.yaml"
    logdir.write_text(
        f"{store}DeployConfig:\n  logAudit: true\n  logAuditMode: file\n  logDir: {a_file}/log\n"
    )
    webhook = tmp / "webhook.yaml"
    webhook.write_text(
        f"ServerConfig:\n  listen: 127.0.0.1\n  port: {busy}\n  tlsCertFile: {tls.cert_file}\n"
        f"  tlsKeyFile: {tls.key_file}\nSecretConfig:\n  enable: false\n"
    )
    no_tls = tmp / "no-tls.yaml"
    no_tls.write_text(
        f"ServerConfig:\n  tlsCertFile: {tmp}/nope.crt\nSecretConfig:\n  enable: false\n"
    )
    loopback = ("--listen", "127.0.0.1", "--proxy-port", "0", "--exporter-port", "0")
    return [
        Bad((), "required: COMMAND"),
        Bad(("no-such-command",), "invalid choice"),
        Bad(("agent", "--proxy-port", "x"), "invalid int value: 'x'"),
        Bad(("agent", "--no-such-flag"), "unrecognized arguments"),
        Bad(("agent", "--config", str(tmp / "missing.yaml")), "cannot read"),
        Bad(("agent", "--config", str(agent), "--listen", "here"), "not an IP address"),
        Bad(("agent", "--config", str(agent), "--proxy-port", "70000"), "is not a port"),
        Bad(("agent", "--config", str(root)), "DeployConfig.mode"),
        Bad(("agent", "--config", str(logdir), *loopback), "DeployConfig.logDir"),
        Bad(
            ("agent", "--config", str(agent), "--listen", "127.0.0.1", "--proxy-port", str(busy)),
            f"cannot listen on 127.0.0.1:{busy}",
        ),
        Bad(
            ("agent", "--config", str(swarm), *loopback, "--p2p-port", str(busy)),
            f"cannot listen on 127.0.0.1:{busy}: address already in use",
        ),
        Bad(("root", "--config", str(agent)), "DeployConfig.mode"),
        Bad(("root", "--config", str(root), *loopback, "--p2p-port", str(busy)), "cannot listen"),
        Bad(("webhook", "--config", str(tmp / "missing.yaml")), "cannot read"),
        Bad(("webhook", "--config", str(no_tls)), "nope.crt"),
        Bad(("webhook", "--config", str(webhook)), f"cannot listen on port {busy}"),
        Bad(("node-setup",), "required: --hosts-dir"),
        Bad(("node-setup", "--hosts-dir", str(a_file / "d")), "Not a directory"),
        Bad(
            (
                "node-setup",
                "--hosts-dir",
                str(tmp / "hd"),
                "--distributed",
                "r.example.com",
                "--etc-hosts",
                str(a_file / "hosts"),
            ),
            "Not a directory",
        ),
        Bad(("node-setup", "--hosts-dir", str(tmp / "hd"), "--agent", "127.0.0.1:1"), "a URL"),
        Bad(("pull", "127.0.0.1:1/a/b:1", str(a_file)), "is not a directory"),
        Bad(("pull", "--mirror", "127.0.0.1:1", "127.0.0.1:1/a/b:1", str(tmp / "p")), "a URL"),
        Bad(("pull", "-q", "127.0.0.1:1/a//b:1", str(tmp / "p")), "repository name"),
        Bad(("pull", "-q", "--plain-http", "127.0.0.1:1/a/b:1", str(tmp / "p")), "127.0.0.1:1"),
        Bad(("preheat", "127.0.0.1:1/a/b:1", "--count", "0"), "at least 1"),
        Bad(("preheat", "127.0.0.1:1/a/b:1"), "no roots"),
        Bad(("preheat", "no-host:1", "--root", "127.0.0.1:1"), "registry host"),
        Bad(("demo", "--nodes", "0"), "must be positive"),
        Bad(("demo", "--workdir", str(a_file), "--nodes", "1", "--layers", "1"), "a-file"),
        Bad(("bench", "--nodes", "0"), "at least 1"),
        Bad(("bench", "--out", str(a_file)), "a-file"),
        Bad(("sim", "--nodes", "0"), "at least 1"),
        Bad(("sim", "--image", "3xfoo"), "bad --image"),
        Bad(("sim", "--from-bench", str(tmp / "missing.json")), "missing.json"),
        Bad(
            (
                "sim",
                "--nodes",
                "2",
                "--image",
                "1x1MiB",
                "--no-baseline",
                "--json",
                str(a_file / "out.json"),
            ),
            "out.json",
        ),
    ]


async def test_every_subcommand_answers_bad_input_with_one_line(tmp_path: Path) -> None:
    """Each failure: a non-zero exit, no traceback, and exactly one line that is not the
    process's own log, naming the subcommand and what was wrong."""
    from shoal.cli import build_parser

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        cases = bad_inputs(tmp_path, busy.getsockname()[1], make_tls(tmp_path))
        limit = asyncio.Semaphore(4)

        async def run(case: Bad) -> tuple[Bad, int, str]:
            async with limit:
                code, err = await shoal(*case.argv)
            return case, code, err

        results = await asyncio.gather(*(run(c) for c in cases))
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) <= {c.argv[0] for c in cases if c.argv}, "a subcommand has no case"
    for case, code, err in results:
        command = case.argv[0] if case.argv and case.argv[0] in sub.choices else ""
        where = f"shoal {' '.join(case.argv)}"
        assert code == 2, f"{where}: exit {code}\n{err}"
        assert "Traceback" not in err, f"{where}:\n{err}"
        lines = [line for line in err.strip().splitlines() if line and not LOG_LINE.match(line)]
        prefix = f"shoal {command}:" if command else "shoal:"
        assert [line for line in lines if line.startswith(prefix)] == lines[-1:], f"{where}:\n{err}"
        assert case.needle in lines[-1], f"{where}: {lines[-1]!r} lacks {case.needle!r}"


async def test_help_says_what_each_port_is_for_each_role() -> None:
    code, agent_help = await shoal_out("agent", "--help")
    assert code == 0 and "registry mirror port" in agent_help
    code, root_help = await shoal_out("root", "--help")
    assert code == 0 and "control API port" in root_help
    assert "registry mirror" not in root_help
    code, bench_help = await shoal_out("bench", "--help")
    assert code == 0 and "bench.json" in bench_help


async def shoal_out(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "shoal", *args, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, " ".join(out.decode().split())
