"""Private images: the mirror passes credentials through and never opens a side door."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp

from shoal.agent.service import Agent
from shoal.lab.image import BuiltImage, basic_authorization
from shoal.lab.origin import OriginRegistry
from shoal.observability import MetricType
from tests.conftest import PASSWORD, USER, agent_config, need_binary


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": basic_authorization(user, password)}


async def test_missing_or_wrong_credentials_get_the_upstream_challenge_and_no_bytes(
    private_origin: OriginRegistry, private_image: BuiltImage
) -> None:
    layer = private_image.layers[0]
    async with Agent(agent_config(private_origin.address)) as a, aiohttp.ClientSession() as s:
        base = f"http://127.0.0.1:{a.proxy_port}/v2"
        for headers in ({}, basic(USER, "wrong")):
            async with s.get(
                f"{base}/{private_image.repo}/blobs/{layer.digest}", headers=headers
            ) as r:
                assert r.status == 401
                assert r.headers["WWW-Authenticate"] == 'Basic realm="shoal-lab"'
                body = await r.read()
                assert len(body) < 1000
                assert b"UNAUTHORIZED" in body
            async with s.get(
                f"{base}/{private_image.repo}/manifests/{private_image.tag}", headers=headers
            ) as r:
                assert r.status == 401
            async with s.get(f"{base}/", headers=headers) as r:
                assert r.status == 401
                assert "WWW-Authenticate" in r.headers
        assert a.metrics.meters[MetricType.DOWNLOAD].count == 0
        assert a.metrics.meters[MetricType.PREAD].count == 0
    assert private_origin.blob_bytes_served() == 0


async def test_right_credentials_pass_through(
    private_origin: OriginRegistry, private_image: BuiltImage
) -> None:
    layer = private_image.layers[0]
    async with Agent(agent_config(private_origin.address)) as a, aiohttp.ClientSession() as s:
        url = f"http://127.0.0.1:{a.proxy_port}/v2/{private_image.repo}/blobs/{layer.digest}"
        async with s.get(url, headers=basic(USER, PASSWORD)) as r:
            assert r.status == 200
            assert await r.read() == layer.path.read_bytes()


async def test_skopeo_pulls_a_private_image_through_the_mirror(
    tmp_path: Path, private_origin: OriginRegistry, private_image: BuiltImage
) -> None:
    need_binary("skopeo")
    async with Agent(agent_config(private_origin.address)) as a:
        conf = tmp_path / "registries.conf"
        conf.write_text(
            f'[[registry]]\nlocation = "{private_origin.address}"\ninsecure = true\n'
            f'[[registry.mirror]]\nlocation = "127.0.0.1:{a.proxy_port}"\ninsecure = true\n'
        )
        src = f"docker://{private_origin.address}/{private_image.repo}:{private_image.tag}"
        mirror = f"127.0.0.1:{a.proxy_port}"
        for password, ok in (("wrong", False), (PASSWORD, True)):
            # skopeo looks credentials up by the host it talks to, so the mirror's
            # entry is the one used: as with the cloned pull secret on a node
            token = basic_authorization(USER, password).removeprefix("Basic ")
            authfile = tmp_path / f"auth-{ok}.json"
            authfile.write_text(
                json.dumps(
                    {"auths": {mirror: {"auth": token}, private_origin.address: {"auth": token}}}
                )
            )
            proc = await asyncio.create_subprocess_exec(
                "skopeo",
                "copy",
                "--registries-conf",
                str(conf),
                "--src-tls-verify=false",
                "--authfile",
                str(authfile),
                src,
                f"oci:{tmp_path}/out-{ok}:x",
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )
            _, err = await proc.communicate()
            assert (proc.returncode == 0) is ok, err.decode()[-500:]
            if not ok:
                assert a.metrics.meters[MetricType.PREAD].count == 0
        layer = private_image.layers[0]
        assert a.metrics.meters[MetricType.PREAD].count >= layer.size
