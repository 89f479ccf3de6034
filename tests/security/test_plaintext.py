"""Credentials in plaintext (issue 17, item 3): an agent forwards the client's registry
``Authorization`` to the root in its join. A TCP relay between the agent and the root
records every byte both ways (the test's tcpdump) while a real client pulls a private
layer with its password through the agent; the capture must not hold the credential.

The same run with ``ControlConfig.tls: false`` (the development mode) must show it in
the capture: that is what proves the capture sees the joins at all.
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import aiohttp
import pytest

from shoal.lab.cluster import LocalCluster, Node
from shoal.lab.image import BuiltImage, basic_authorization
from shoal.lab.origin import OriginRegistry
from shoal.lab.ports import free_port
from tests.conftest import PASSWORD, USER
from tests.security.helpers import relay

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


async def pull_digest(node: Node, img: BuiltImage, digest: str, authorization: str) -> str:
    url = f"http://{node.mirror}/v2/{img.repo}/blobs/{digest}"
    h = hashlib.sha256()
    async with (
        aiohttp.ClientSession() as s,
        s.get(url, headers={"Authorization": authorization}) as r,
    ):
        assert r.status == 200
        async for chunk in r.content.iter_chunked(1 << 20):
            h.update(chunk)
    return f"sha256:{h.hexdigest()}"


@pytest.mark.parametrize("tls", [True, False], ids=["tls", "development-plain"])
async def test_an_agents_control_traffic_shows_no_authorization_in_clear(
    tmp_path: Path, private_origin: OriginRegistry, private_image: BuiltImage, tls: bool
) -> None:
    relay_port = free_port()
    extra: dict[str, dict[str, object]] = {"P2PConfig": {"roots": [f"127.0.0.1:{relay_port}"]}}
    if not tls:
        extra["ControlConfig"] = {"tls": False}
    cluster = LocalCluster(tmp_path / "c", private_origin.address, agents=1, extra=extra)
    layer = private_image.layers[0]
    authorization = basic_authorization(USER, PASSWORD)
    async with relay(("127.0.0.1", cluster.roots[0].proxy_port), port=relay_port) as tap:
        async with cluster:
            agent = cluster.agents[0]
            got = await pull_digest(agent, private_image, layer.digest, authorization)
            assert got == layer.digest
        log = agent.log.read_text(errors="replace")
    captured = tap.captured
    assert tap.connections >= 1 and len(tap.upstream) > 200, "the agent never called the root"
    assert private_origin.blob_gets(layer.digest) == 1  # the root fetched it, for the agent
    secrets = [
        authorization.encode(),
        authorization.split(" ", 1)[1].encode(),
        PASSWORD.encode(),
        base64.b64encode(f"{USER}:{PASSWORD}".encode()),
    ]
    if tls:
        assert tap.upstream[:1] == b"\x16"  # a TLS handshake record, from the first byte
        assert not [s for s in secrets if s in captured]
        assert b"/swarm/v1/join" not in captured
        assert "PLAIN HTTP" not in log
    else:
        assert authorization.encode() in captured
        assert "PLAIN HTTP" in log  # and the agent said so, loudly
