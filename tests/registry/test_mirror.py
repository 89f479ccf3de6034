"""The mirror against the real registry (Debian's docker-registry) on 127.0.0.1."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import ssl
from pathlib import Path

import aiohttp
import pytest
from yarl import URL

from shoal.agent.service import Agent
from shoal.lab.image import OCI_INDEX, OCI_MANIFEST, BuiltImage
from shoal.lab.origin import OriginRegistry
from tests.conftest import agent_config


def mirror_url(agent: Agent) -> str:
    return f"http://127.0.0.1:{agent.proxy_port}"


async def test_base_endpoint_answers_like_a_registry(agent: Agent) -> None:
    async with aiohttp.ClientSession() as s, s.get(f"{mirror_url(agent)}/v2/") as r:
        assert r.status == 200
        assert r.headers["Docker-Distribution-API-Version"] == "registry/2.0"


async def test_manifest_by_tag_and_by_digest(agent: Agent, image: BuiltImage) -> None:
    base = f"{mirror_url(agent)}/v2/{image.repo}/manifests"
    accept = {"Accept": f"{OCI_INDEX}, {OCI_MANIFEST}"}
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{base}/{image.tag}", headers=accept) as r:
            assert r.status == 200
            assert r.headers["Content-Type"] == OCI_INDEX
            assert r.headers["Docker-Content-Digest"] == image.index_digest
            assert await r.read() == image.index
        async with s.get(f"{base}/{image.manifest_digest}", headers=accept) as r:
            assert r.status == 200
            assert await r.read() == image.manifest
        async with s.head(f"{base}/{image.tag}", headers=accept) as r:
            assert r.status == 200
            assert r.headers["Docker-Content-Digest"] == image.index_digest
        async with s.get(f"{base}/nope", headers=accept) as r:
            assert r.status == 404
            assert (await r.json())["errors"][0]["code"] == "MANIFEST_UNKNOWN"


async def test_manifest_accept_lines_are_all_forwarded(agent: Agent, image: BuiltImage) -> None:
    """Clients send one Accept line per type; the registry must see every one of them."""
    url = f"{mirror_url(agent)}/v2/{image.repo}/manifests/{image.tag}"
    headers = [("Accept", OCI_MANIFEST), ("Accept", OCI_INDEX)]
    async with aiohttp.ClientSession() as s, s.get(url, headers=headers) as r:
        assert r.status == 200
        assert r.headers["Content-Type"] == OCI_INDEX


async def test_blob_whole_head_and_range(agent: Agent, image: BuiltImage) -> None:
    layer = image.layers[1]
    data = layer.path.read_bytes()
    url = f"{mirror_url(agent)}/v2/{image.repo}/blobs/{layer.digest}"
    async with aiohttp.ClientSession() as s:
        async with s.get(url) as r:
            assert r.status == 200
            body = await r.read()
        assert f"sha256:{hashlib.sha256(body).hexdigest()}" == layer.digest
        async with s.head(url) as r:
            assert r.status == 200
            assert int(r.headers["Content-Length"]) == layer.size
            assert r.headers["Docker-Content-Digest"] == layer.digest
        async with s.get(url, headers={"Range": "bytes=1000-1999"}) as r:
            assert r.status == 206
            assert r.headers["Content-Range"] == f"bytes 1000-1999/{layer.size}"
            assert await r.read() == data[1000:2000]
        async with s.get(url, headers={"Range": f"bytes={layer.size - 10}-"}) as r:
            assert r.status == 206
            assert await r.read() == data[-10:]


async def test_range_past_the_end_is_416_with_an_oci_body(agent: Agent, image: BuiltImage) -> None:
    layer = image.layers[0]
    url = f"{mirror_url(agent)}/v2/{image.repo}/blobs/{layer.digest}"
    async with aiohttp.ClientSession() as s:
        async with s.get(url, headers={"Range": f"bytes={layer.size + 5}-"}) as r:
            assert r.status == 416
            assert (await r.json())["errors"][0]["code"] == "RANGE_INVALID"
        async with s.get(url, headers={"Range": "lines=1-2"}) as r:
            assert r.status == 416
            assert (await r.json())["errors"][0]["code"] == "RANGE_INVALID"


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/v2/shoal/app/blobs/sha256:1234", 400, "DIGEST_INVALID"),
        ("/v2/shoal/app/blobs/md5:d41d8cd98f00b204e9800998ecf8427e", 400, "DIGEST_INVALID"),
        ("/v2/shoal/app/manifests/bad%0Atag", 400, "NAME_INVALID"),
        ("/v2/Shoal/App/manifests/v1", 400, "NAME_INVALID"),
        ("/v2/shoal/..%2F..%2Fetc/manifests/v1", 400, "NAME_INVALID"),
        ("/v2/shoal/app/blobs/uploads/", 404, "NAME_UNKNOWN"),
        ("/v2/shoal/app/tags/list", 404, "NAME_UNKNOWN"),
    ],
)
async def test_bad_input_is_a_clear_oci_error(
    agent: Agent, origin: OriginRegistry, path: str, status: int, code: str
) -> None:
    before = len(origin.served())
    url = URL(mirror_url(agent) + path, encoded=True)
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        assert r.status == status
        assert (await r.json())["errors"][0]["code"] == code
    assert len(origin.served()) == before, "a refused request must not reach the origin"


async def test_path_traversal_in_a_raw_request_never_reaches_the_origin(
    agent: Agent, origin: OriginRegistry
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", agent.proxy_port)
    writer.write(b"GET /v2/../../etc/passwd/manifests/v1 HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    status = (await reader.readline()).split()[1]
    writer.close()
    await writer.wait_closed()
    assert status in (b"400", b"404")
    assert not [r for r in origin.served() if "passwd" in r.uri]


async def test_pushes_are_refused(agent: Agent, image: BuiltImage) -> None:
    url = f"{mirror_url(agent)}/v2/{image.repo}/manifests/{image.tag}"
    async with aiohttp.ClientSession() as s, s.put(url, data=b"{}") as r:
        assert r.status == 405
        assert (await r.json())["errors"][0]["code"] == "UNSUPPORTED"


async def test_unknown_upstream_is_refused(agent: Agent, image: BuiltImage) -> None:
    url = f"{mirror_url(agent)}/v2/{image.repo}/manifests/{image.tag}?ns=evil.example.com"
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        assert r.status == 400
        body = await r.json()
        assert body["errors"][0]["code"] == "NAME_UNKNOWN"
        assert "evil.example.com" in body["errors"][0]["message"]


async def test_ns_parameter_and_distributed_host_select_the_upstream(
    tmp_path: Path, origin: OriginRegistry, image: BuiltImage
) -> None:
    """No default upstream: only ``?ns=`` or a ``.distributed.`` Host can name it."""
    cfg = agent_config(origin.address, UpstreamConfig={"default": ""})
    async with Agent(cfg) as a, aiohttp.ClientSession() as s:
        url = f"{mirror_url(a)}/v2/{image.repo}/manifests/{image.manifest_digest}"
        async with s.get(url) as r:
            assert r.status == 400
        async with s.get(url, params={"ns": origin.address}) as r:
            assert r.status == 200
            assert await r.read() == image.manifest


async def test_corrupted_origin_blob_is_cut_not_served_whole(
    agent: Agent, origin: OriginRegistry, image: BuiltImage
) -> None:
    layer = image.layers[0]
    hexpart = layer.digest.split(":")[1]
    stored = (
        origin.workdir / "storage/docker/registry/v2/blobs/sha256" / hexpart[:2] / hexpart / "data"
    )
    raw = bytearray(stored.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    stored.write_bytes(bytes(raw))
    url = f"{mirror_url(agent)}/v2/{image.repo}/blobs/{layer.digest}"
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        assert r.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await r.read()


async def test_metrics_and_audit_show_the_bytes(
    tmp_path: Path, origin: OriginRegistry, image: BuiltImage
) -> None:
    logdir = tmp_path / "log"
    cfg = agent_config(
        origin.address,
        DeployConfig={"logAudit": True, "logAuditMode": "file", "logDir": str(logdir)},
    )
    layer = image.layers[1]
    async with Agent(cfg) as a, aiohttp.ClientSession() as s:
        async with s.get(f"{mirror_url(a)}/v2/{image.repo}/blobs/{layer.digest}") as r:
            assert len(await r.read()) == layer.size
        async with s.get(f"http://127.0.0.1:{a.exporter_port}/metrics") as r:
            text = await r.text()
    from prometheus_client.parser import text_string_to_metric_families

    counts = {
        s.labels["type"]: s.value
        for fam in text_string_to_metric_families(text)
        if fam.name == "DADIP2P_Count"
        for s in fam.samples
    }
    assert counts["download"] == layer.size
    assert counts["pread"] == layer.size
    lines = (logdir / "audit.log").read_text().splitlines()
    pread = [line for line in lines if "|http:pread[" in line]
    download = [line for line in lines if "|download[" in line]
    assert len(pread) == 1
    assert len(download) == 1
    assert f"[size={layer.size}]" in pread[0]
    assert f"/v2/{image.repo}/blobs/{layer.digest}][offset=0]" in pread[0]


async def test_metrics_on_the_proxy_port_when_not_standalone(
    origin: OriginRegistry, image: BuiltImage
) -> None:
    cfg = agent_config(origin.address, ExporterConfig={"standaloneExporterPort": False})
    async with Agent(cfg) as a, aiohttp.ClientSession() as s:
        assert a.exporter_port == a.proxy_port
        async with s.get(f"{mirror_url(a)}/metrics") as r:
            assert r.status == 200
            assert "DADIP2P_Alive{" in await r.text()


async def test_accelerator_serves_ranges_of_allowed_blob_urls(
    agent: Agent, origin: OriginRegistry, image: BuiltImage
) -> None:
    layer = image.layers[1]
    data = layer.path.read_bytes()
    blob_url = f"http://{origin.address}/v2/{image.repo}/blobs/{layer.digest}"
    async with aiohttp.ClientSession() as s:
        url = f"{mirror_url(agent)}/accelerator/{blob_url}"
        async with s.get(url, headers={"Range": "bytes=65536-131071"}) as r:
            assert r.status == 206
            assert await r.read() == data[65536:131072]
        async with s.get(url) as r:
            assert r.status == 200
            assert await r.read() == data


@pytest.mark.parametrize(
    "target",
    [
        "http://evil.example.com/v2/shoal/app/blobs/sha256:" + "a" * 64,
        "http://{origin}/v2/shoal/app/manifests/v1",
        "http://{origin}/v2/",
        "ftp://{origin}/v2/shoal/app/blobs/sha256:" + "a" * 64,
        "http://169.254.169.254/latest/meta-data/",
        "http://{origin}@evil.example.com/v2/shoal/app/blobs/sha256:" + "a" * 64,
    ],
)
async def test_accelerator_is_no_open_proxy(
    agent: Agent, origin: OriginRegistry, target: str
) -> None:
    before = len(origin.served())
    url = f"{mirror_url(agent)}/accelerator/{target.format(origin=origin.address)}"
    async with aiohttp.ClientSession() as s, s.get(URL(url, encoded=True)) as r:
        assert r.status == 403
        assert (await r.json())["errors"][0]["code"] == "DENIED"
    assert len(origin.served()) == before


def test_error_bodies_are_json(tmp_path: Path) -> None:
    from shoal.errors import BlobUnknownError
    from shoal.registry.responses import error_response

    resp = error_response(BlobUnknownError("gone"))
    assert resp.status == 404
    assert resp.body is not None
    assert isinstance(resp.body, bytes)
    assert json.loads(resp.body)["errors"][0] == {
        "code": "BLOB_UNKNOWN",
        "message": "gone",
        "detail": None,
    }


async def test_a_client_trying_https_first_gets_no_warning_and_then_plain_http(
    origin: OriginRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    """skopeo and podman try TLS first on an insecure mirror, on every pull: the agent
    refuses the handshake and serves the plain request that follows, without a warning
    in its log for each pull."""
    caplog.set_level(logging.DEBUG)
    async with Agent(agent_config(origin.address)) as agent:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await asyncio.open_connection("127.0.0.1", agent.proxy_port, ssl=ctx)
        url = f"http://127.0.0.1:{agent.proxy_port}/v2/"
        async with aiohttp.ClientSession() as s, s.get(url) as r:
            assert r.status == 200
    refused = [r for r in caplog.records if "bad request from" in r.getMessage()]
    assert refused and all(r.levelno == logging.DEBUG for r in refused)
