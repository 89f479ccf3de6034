"""Real clients pulling a multi-layer image through the agent from the real registry."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from shoal.agent.service import Agent
from shoal.lab.image import BuiltImage, build_image, oci_layout_blob, push_image
from shoal.lab.origin import OriginRegistry
from shoal.lab.process import stop_process
from tests.conftest import agent_config, need_binary

pytestmark = pytest.mark.e2e


async def run(*argv: str, check: bool = True) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await proc.communicate()
    text = out.decode(errors="replace")
    assert proc.returncode is not None
    if check:
        assert proc.returncode == 0, f"{argv[0]} failed: {text[-1500:]}"
    return proc.returncode, text


def audit_bytes(path: Path, op: str) -> int:
    total = 0
    for line in path.read_text().splitlines():
        if f"|{op}[" in line:
            size = int(line.split("[size=")[1].split("]")[0])
            total += max(size, 0)
    return total


async def metric_count(agent: Agent, kind: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    url = f"http://127.0.0.1:{agent.exporter_port}/metrics"
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        text = await r.text()
    for fam in text_string_to_metric_families(text):
        if fam.name == "DADIP2P_Count":
            for sample in fam.samples:
                if sample.labels["type"] == kind:
                    return sample.value
    raise AssertionError("DADIP2P_Count missing")


@pytest.fixture(params=["relay", "store"])
async def audited_agent(
    request: pytest.FixtureRequest, tmp_path: Path, origin: OriginRegistry
) -> AsyncIterator[Agent]:
    """The agent both ways: relaying the origin's bytes, and through its piece store."""
    cfg = agent_config(
        origin.address,
        cache=tmp_path / "cache" if request.param == "store" else None,
        DeployConfig={"logAudit": True, "logAuditMode": "file", "logDir": str(tmp_path / "log")},
    )
    async with Agent(cfg) as a:
        yield a


async def test_skopeo_pulls_through_the_mirror(
    tmp_path: Path, origin: OriginRegistry, image: BuiltImage, audited_agent: Agent
) -> None:
    need_binary("skopeo")
    conf = tmp_path / "registries.conf"
    conf.write_text(
        f'[[registry]]\nlocation = "{origin.address}"\ninsecure = true\n'
        f'[[registry.mirror]]\nlocation = "127.0.0.1:{audited_agent.proxy_port}"\n'
        "insecure = true\n"
    )
    dest = tmp_path / "pulled"
    await run(
        "skopeo",
        "copy",
        "--registries-conf",
        str(conf),
        "--src-tls-verify=false",
        f"docker://{origin.address}/{image.repo}:{image.tag}",
        f"oci:{dest}:{image.tag}",
    )
    # skopeo falls back to the origin silently: prove the bytes came through the agent
    for blob in image.blobs():
        data = oci_layout_blob(dest, blob.digest).read_bytes()
        assert f"sha256:{hashlib.sha256(data).hexdigest()}" == blob.digest
    total = image.total_size
    assert await metric_count(audited_agent, "pread") == total
    assert await metric_count(audited_agent, "download") == total
    audit = tmp_path / "log" / "audit.log"
    assert audit_bytes(audit, "http:pread") == total
    assert audit_bytes(audit, "download") == total
    assert origin.blob_bytes_served() == total


@pytest.fixture
async def containerd(tmp_path: Path) -> AsyncIterator[Path]:
    """A containerd of our own: its own root, state and socket; CRI off."""
    need_binary("containerd", "ctr", "runc")
    base = tmp_path / "ctrd"
    base.mkdir()
    sock = base / "containerd.sock"
    cfg = base / "config.toml"
    cfg.write_text(
        "version = 2\n"
        f'root = "{base}/root"\nstate = "{base}/state"\n'
        'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
        f'[grpc]\n  address = "{sock}"\n'
        f'[ttrpc]\n  address = "{sock}.ttrpc"\n'
        f'[debug]\n  address = ""\n'
    )
    log = (base / "containerd.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        "containerd", "--config", str(cfg), stdout=log, stderr=log
    )
    try:
        for _ in range(200):
            if sock.exists():
                code, _ = await run("ctr", "--address", str(sock), "version", check=False)
                if code == 0:
                    break
            if proc.returncode is not None:
                pytest.fail(f"containerd exited: {(base / 'containerd.log').read_text()[-800:]}")
            await asyncio.sleep(0.05)
        else:
            pytest.fail("containerd did not come up")
        yield sock
    finally:
        await stop_process(proc)
        log.close()


async def test_ctr_pulls_through_hosts_toml_with_ns(
    tmp_path: Path, origin: OriginRegistry, audited_agent: Agent, containerd: Path
) -> None:
    img = build_image(
        tmp_path / "ctrimg",
        repo="shoal/ctr",
        tag="v2",
        layer_sizes=[1 << 20, 2 << 20, 4096],
        with_index=True,
    )
    await push_image(origin.url, img)
    hosts = tmp_path / "certs.d" / origin.address
    hosts.mkdir(parents=True)
    (hosts / "hosts.toml").write_text(
        f'server = "http://{origin.address}"\n\n'
        f'[host."http://127.0.0.1:{audited_agent.proxy_port}"]\n'
        '  capabilities = ["pull", "resolve"]\n'
    )
    ref = f"{origin.address}/{img.repo}:{img.tag}"
    await run(
        "ctr",
        "--address",
        str(containerd),
        "--namespace",
        "shoaltest",
        "images",
        "pull",
        "--hosts-dir",
        str(tmp_path / "certs.d"),
        "--snapshotter",
        "native",
        ref,
    )
    _, listing = await run(
        "ctr", "--address", str(containerd), "--namespace", "shoaltest", "images", "ls"
    )
    assert img.top_digest in listing
    _, content = await run(
        "ctr", "--address", str(containerd), "--namespace", "shoaltest", "content", "ls"
    )
    for blob in img.blobs():
        assert blob.digest in content
    # every blob reached containerd through the agent, asked for with ?ns=<origin>
    assert await metric_count(audited_agent, "download") == img.total_size
    audit = (tmp_path / "log" / "audit.log").read_text()
    for blob in img.layers:
        assert f"/v2/{img.repo}/blobs/{blob.digest}][offset=0][size={blob.size}]" in audit
    for blob in img.blobs():
        assert origin.blob_gets(blob.digest) == 1
