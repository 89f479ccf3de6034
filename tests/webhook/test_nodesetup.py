"""containerd hosts.toml files: parsed back with tomllib, then used by a real containerd.

The real-client test starts its own containerd (own root, state and socket in a temp
dir, CRI plugin off), serves a one-layer image from a recording registry on loopback
that stands in for the agent, and has ``ctr images pull --hosts-dir`` pull the rewritten
reference ``<a>.distributed.<b>:65001/...``: the pull must succeed through the "agent"
with ``?ns=`` naming the distributed host, proving containerd reads the files as
written.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tomllib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp import web

from shoal.cli import main
from shoal.lab.ports import free_port
from shoal.webhook.hoststoml import MARKER, distributed_hosts, mirror_hosts
from shoal.webhook.nodesetup import containerd_uses, plan_files, write_files

AGENT = "http://127.0.0.1:65001"


def test_distributed_file_parses_and_falls_back_to_origin() -> None:
    f = distributed_hosts("test-registry-vpc.cn-hangzhou.cr.aliyuncs.com", AGENT, 65001)
    assert f is not None
    assert f.directory == "test-registry-vpc.distributed.cn-hangzhou.cr.aliyuncs.com:65001"
    doc = tomllib.loads(f.text)
    assert doc == {
        "server": "https://test-registry-vpc.cn-hangzhou.cr.aliyuncs.com",
        "host": {AGENT: {"capabilities": ["pull", "resolve"], "dial_timeout": "1s"}},
    }
    hub = distributed_hosts("docker.io", AGENT, 65001)
    assert hub is not None and hub.directory == "docker.distributed.io:65001"
    assert tomllib.loads(hub.text)["server"] == "https://registry-1.docker.io"
    assert distributed_hosts("127.0.0.1:5000", AGENT, 65001) is None


def test_mirror_file_parses() -> None:
    f = mirror_hosts("ghcr.io", AGENT)
    assert f.directory == "ghcr.io"
    assert tomllib.loads(f.text) == {
        "server": "https://ghcr.io",
        "host": {AGENT: {"capabilities": ["pull", "resolve"], "dial_timeout": "1s"}},
    }
    plain = mirror_hosts("127.0.0.1:5000", AGENT, plain_http=True)
    assert tomllib.loads(plain.text)["server"] == "http://127.0.0.1:5000"


def test_write_is_idempotent_prunes_and_respects_foreign_files(tmp_path: Path) -> None:
    files, skipped = plan_files(
        ["a.example.com", "docker.io", "10.0.0.1"], ["ghcr.io"], agent=AGENT, port=65001
    )
    assert skipped == ["10.0.0.1"]
    foreign = tmp_path / "ghcr.io" / "hosts.toml"
    foreign.parent.mkdir()
    foreign.write_text('server = "https://ghcr.io"\n')
    out = write_files(tmp_path, files)
    assert sorted(out.written) == ["a.distributed.example.com:65001", "docker.distributed.io:65001"]
    assert out.foreign == ["ghcr.io"]
    assert foreign.read_text() == 'server = "https://ghcr.io"\n'
    again = write_files(tmp_path, files)
    assert again.written == [] and len(again.unchanged) == 2
    fewer, _ = plan_files(["docker.io"], [], agent=AGENT, port=65001)
    pruned = write_files(tmp_path, fewer)
    assert pruned.removed == ["a.distributed.example.com:65001"]
    assert not (tmp_path / "a.distributed.example.com:65001").exists()
    assert foreign.exists()


def test_cli_reads_the_agent_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(
        "ProxyConfig:\n  port: 65001\n"
        "UpstreamConfig:\n  default: docker.io\n  registries:\n"
        "    - host: test-registry-vpc.cn-hangzhou.cr.aliyuncs.com\n"
    )
    containerd = tmp_path / "config.toml"
    containerd.write_text(
        'version = 2\n[plugins."io.containerd.grpc.v1.cri".registry]\n'
        '  config_path = "/etc/containerd/certs.d"\n'
    )
    hosts = tmp_path / "certs.d"
    rc = main(
        [
            "node-setup",
            "--hosts-dir",
            str(hosts),
            "--config",
            str(cfg),
            "--mirror",
            "quay.io",
            "--containerd-config",
            str(containerd),
            "--host-path",
            "/etc/containerd/certs.d",
        ]
    )
    assert rc == 0
    assert sorted(p.name for p in hosts.iterdir()) == [
        "docker.distributed.io:65001",
        "quay.io",
        "test-registry-vpc.distributed.cn-hangzhou.cr.aliyuncs.com:65001",
    ]
    for p in hosts.iterdir():
        text = (p / "hosts.toml").read_text()
        assert text.startswith(MARKER)
        tomllib.loads(text)
    err = capsys.readouterr().err
    assert "warning" not in err
    assert containerd_uses(containerd, "/somewhere/else") is not None


async def test_every_writes_back_what_the_runtime_removed(tmp_path: Path) -> None:
    """k3s empties its certs.d at every start; ``--every`` puts the files back."""
    cfg = tmp_path / "agent.yaml"
    cfg.write_text("UpstreamConfig:\n  registries:\n    - host: registry.example.com\n")
    hosts = tmp_path / "certs.d"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "shoal", "node-setup", "--hosts-dir", str(hosts),
        "--config", str(cfg), "--every", "0.1",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    target = hosts / "registry.distributed.example.com:65001" / "hosts.toml"
    try:
        for _ in range(200):
            if target.exists():
                break
            await asyncio.sleep(0.05)
        assert target.read_text().startswith(MARKER)
        shutil.rmtree(hosts)  # what k3s does at its start
        for _ in range(200):
            if target.exists():
                break
            await asyncio.sleep(0.05)
        assert target.read_text().startswith(MARKER)
        assert proc.returncode is None  # still running
    finally:
        proc.terminate()
        out, _ = await proc.communicate()
    # one line per change, not one every 0.1 s
    assert out.decode().count("node-setup: written:") == 2


# -- a real containerd --------------------------------------------------------------


def _blob(data: bytes) -> tuple[str, bytes]:
    return "sha256:" + hashlib.sha256(data).hexdigest(), data


def tiny_image() -> tuple[bytes, dict[str, bytes]]:
    """An OCI image of one layer holding one file: (manifest, blobs by digest)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        body = b"hello from shoal\n"
        info = tarfile.TarInfo("hello.txt")
        info.size = len(body)
        tar.addfile(info, io.BytesIO(body))
    layer_tar = raw.getvalue()
    layer_digest, layer = _blob(gzip.compress(layer_tar, mtime=0))
    config = json.dumps(
        {
            "architecture": "amd64" if os.uname().machine == "x86_64" else "arm64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [_blob(layer_tar)[0]]},
            "config": {},
        }
    ).encode()
    config_digest, _ = _blob(config)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": layer_digest,
                    "size": len(layer),
                }
            ],
        }
    ).encode()
    return manifest, {config_digest: config, layer_digest: layer}


class RecordingAgent:
    """Serves the tiny image for any repository and records every request."""

    def __init__(self) -> None:
        self.manifest, self.blobs = tiny_image()
        self.seen: list[str] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(request.path_qs)
        path = request.path
        if path == "/v2/" or path == "/v2":
            return web.Response(status=200)
        if "/manifests/" in path:
            digest = "sha256:" + hashlib.sha256(self.manifest).hexdigest()
            headers = {
                "Content-Type": "application/vnd.oci.image.manifest.v1+json",
                "Docker-Content-Digest": digest,
            }
            body = b"" if request.method == "HEAD" else self.manifest
            return web.Response(
                body=body, headers={**headers, "Content-Length": str(len(self.manifest))}
            )
        if "/blobs/" in path:
            data = self.blobs.get(path.rsplit("/", 1)[1])
            if data is None:
                return web.Response(status=404)
            return web.Response(body=b"" if request.method == "HEAD" else data)
        return web.Response(status=404)


@pytest.fixture
def containerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    if os.geteuid() != 0 or not shutil.which("containerd") or not shutil.which("ctr"):
        pytest.skip("needs root, containerd and ctr")
    # a short path: unix socket paths are limited to 108 bytes
    base = Path(tmp_path_factory.mktemp("ctrd"))
    sock = base / "c.sock"
    cfg = base / "config.toml"
    cfg.write_text(
        f'version = 2\nroot = "{base}/root"\nstate = "{base}/state"\n'
        'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
        f'[grpc]\n  address = "{sock}"\n[ttrpc]\n  address = "{sock}.ttrpc"\n'
        f'[debug]\n  address = "{base}/debug.sock"\n'
    )
    log = (base / "containerd.log").open("wb")
    proc = subprocess.Popen(
        ["containerd", "--config", str(cfg)], stdout=log, stderr=subprocess.STDOUT
    )
    try:
        for _ in range(100):
            if sock.exists():
                break
            if proc.poll() is not None:
                pytest.fail(f"containerd exited: {(base / 'containerd.log').read_text()[-500:]}")
            subprocess.run(["sleep", "0.05"], check=True)
        yield sock
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture
async def agent() -> AsyncIterator[tuple[RecordingAgent, int]]:
    rec = RecordingAgent()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", rec.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield rec, int(runner.addresses[0][1])
    finally:
        await runner.cleanup()


async def _ctr(sock: Path, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        "ctr",
        "--address",
        str(sock),
        "--namespace",
        "shoal-test",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(errors="replace")


@pytest.mark.e2e
async def test_real_containerd_pulls_through_the_agent(
    tmp_path: Path, containerd: Path, agent: tuple[RecordingAgent, int]
) -> None:
    rec, port = agent
    hosts = tmp_path / "certs.d"
    agent_url = f"http://127.0.0.1:{port}"
    files, _ = plan_files(
        ["test-registry-vpc.cn-hangzhou.cr.aliyuncs.com"], ["quay.io"], agent=agent_url, port=65001
    )
    write_files(hosts, files)

    ref = f"{files[0].directory}/docker-builder/nginx:latest"
    rc, out = await _ctr(
        containerd, "images", "pull", "--snapshotter", "native", "--hosts-dir", str(hosts), ref
    )
    assert rc == 0, out
    ns = "ns=test-registry-vpc.distributed.cn-hangzhou.cr.aliyuncs.com%3A65001"
    assert any(
        s.startswith("/v2/docker-builder/nginx/manifests/latest") and ns in s for s in rec.seen
    )
    assert any("/blobs/sha256:" in s and ns in s for s in rec.seen)

    # mirror mode: the plain reference goes to the agent first
    rec.seen.clear()
    rc, out = await _ctr(
        containerd,
        "images",
        "pull",
        "--snapshotter",
        "native",
        "--hosts-dir",
        str(hosts),
        "quay.io/prom/busybox:latest",
    )
    assert rc == 0, out
    assert any("manifests/latest" in s and "ns=quay.io" in s for s in rec.seen)


@pytest.mark.e2e
async def test_real_containerd_falls_back_to_the_origin_when_the_agent_is_down(
    tmp_path: Path, containerd: Path, agent: tuple[RecordingAgent, int]
) -> None:
    origin, origin_port = agent  # this time the recording server is the origin
    dead_agent = f"http://127.0.0.1:{free_port()}"
    registry = f"127.0.0.1:{origin_port}"
    files, _ = plan_files([], [registry], agent=dead_agent, port=65001, plain_http=[registry])
    hosts = tmp_path / "certs.d"
    write_files(hosts, files)
    rc, out = await _ctr(
        containerd,
        "images",
        "pull",
        "--snapshotter",
        "native",
        "--hosts-dir",
        str(hosts),
        f"{registry}/team/app:1",
    )
    assert rc == 0, out
    assert any(s.startswith("/v2/team/app/manifests/1") for s in origin.seen)
