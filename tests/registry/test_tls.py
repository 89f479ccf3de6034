"""Real TLS to the origin: a per-registry CA file is trusted, nothing else is."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import trustme

from shoal.agent.service import Agent
from shoal.config import Config, parse_config
from shoal.lab.image import build_image, push_image
from shoal.lab.origin import OriginRegistry
from tests.conftest import need_binary


@pytest.fixture
async def tls_origin(tmp_path: Path) -> AsyncIterator[tuple[OriginRegistry, Path]]:
    need_binary("docker-registry")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_path, key_path, ca_path = tmp_path / "c.pem", tmp_path / "k.pem", tmp_path / "ca.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    for blob in cert.cert_chain_pems[1:]:
        blob.write_to_path(str(cert_path), append=True)
    cert.private_key_pem.write_to_path(str(key_path))
    ca.cert_pem.write_to_path(str(ca_path))
    async with OriginRegistry(tmp_path / "tls", tls=(cert_path, key_path)) as reg:
        yield reg, ca_path


def tls_agent_config(address: str, registry: dict[str, object]) -> Config:
    return parse_config(
        {
            "ProxyConfig": {"port": 0, "listen": "127.0.0.1"},
            "ExporterConfig": {"enable": False},
            "CacheConfig": {"path": ""},  # the default would be /dadi-p2p/cache on this machine
            "UpstreamConfig": {"default": address, "registries": [{"host": address, **registry}]},
        }
    )


async def test_registry_ca_file_is_trusted_and_the_system_store_alone_is_not(
    tmp_path: Path, tls_origin: tuple[OriginRegistry, Path]
) -> None:
    origin, ca_path = tls_origin
    img = build_image(tmp_path / "img", repo="tls/app", tag="1", layer_sizes=[100_000])
    await push_image(origin.url, img, ssl_context=ssl.create_default_context(cafile=str(ca_path)))
    layer = img.layers[0]
    path = f"/v2/{img.repo}/blobs/{layer.digest}"
    trusted = tls_agent_config(origin.address, {"caFile": str(ca_path)})
    untrusted = tls_agent_config(origin.address, {})
    async with aiohttp.ClientSession() as s:
        async with Agent(trusted) as a, s.get(f"http://127.0.0.1:{a.proxy_port}{path}") as r:
            assert r.status == 200
            assert await r.read() == layer.path.read_bytes()
        async with Agent(untrusted) as a, s.get(f"http://127.0.0.1:{a.proxy_port}{path}") as r:
            assert r.status == 502
            body = await r.json()
            assert body["errors"][0]["code"] == "UNAVAILABLE"
            assert "CERTIFICATE_VERIFY_FAILED" in body["errors"][0]["message"]
