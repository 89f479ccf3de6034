"""SSRF through redirects: a listed registry answering ``302 Location: <internal>``.

The attack of issue 17, item 1, rerun against a real agent: the registry is allowed,
each redirect target is a canary on an address the policy must refuse (another loopback
address, ``[::1]``, another port of the registry's own address, names that resolve to
loopback), asked through every way the mirror fetches a blob (relay, piece store,
accelerator, the access check's HEAD), with a ``Range`` so a followed redirect would
hand the canary's bytes straight back. Link-local and private targets are not
contacted even in the test: their classification and the connect-time refusal are
checked with a DNS the test controls, which refuses before any connect.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from shoal.agent.service import Agent
from shoal.config import UpstreamConfig, parse_config
from shoal.registry.egress import EgressPolicy, EgressRefusedError, PolicyResolver, internal_reason
from shoal.registry.upstream import UpstreamClient
from tests.conftest import agent_config
from tests.security.canary import (
    BLOB,
    DIGEST,
    MARK,
    Aiming,
    Canary,
    MapResolver,
    aiming_registry,
    canary,
)

#: (what it stands for, Location template, redirect status, bounce once first)
TARGETS = [
    ("another loopback address", "http://{c4}/latest/meta-data/iam/", 302, False),
    ("IPv6 loopback", "http://{c6}/x", 302, False),
    ("the registry's own address, another port", "http://127.0.0.1:{p1}/x", 302, False),
    ("localhost by name", "http://localhost:{p1}/x", 302, False),
    ("127.1 short form", "http://127.1:{p1}/x", 302, False),
    ("decimal address", "http://2130706433:{p1}/x", 302, False),
    ("hex address", "http://0x7f000001:{p1}/x", 302, False),
    ("IPv4-mapped IPv6", "http://[::ffff:127.0.0.2]:{p4}/x", 302, False),
    ("unspecified address", "http://0.0.0.0:{p1}/x", 302, False),
    ("https to loopback", "https://{c4}/x", 302, False),
    ("credentials in the URL", "http://user:pw@{c4}/x", 302, False),
    ("scheme-relative", "//{c4}/x", 302, False),
    ("a name the DNS points at loopback", "http://rebind.test:{p4}/x", 302, False),
    ("file scheme", "file:///etc/passwd", 302, False),
    ("gopher scheme", "gopher://{c4}/_x", 302, False),
    ("allowed hop, then loopback", "http://{c4}/x", 302, True),
    ("301 to loopback", "http://{c4}/x", 301, False),
    ("303 to loopback", "http://{c4}/x", 303, False),
    ("307 to IPv6 loopback", "http://{c6}/x", 307, False),
    ("308 to loopback", "http://{c4}/x", 308, False),
]


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.fixture
async def canaries() -> AsyncIterator[dict[str, Canary]]:
    async with canary("127.0.0.2") as c4, canary("127.0.0.1") as c1:
        if _has_ipv6_loopback():
            async with canary("::1") as c6:
                yield {"c4": c4, "c1": c1, "c6": c6}
        else:
            yield {"c4": c4, "c1": c1}


@pytest.fixture
async def aiming() -> AsyncIterator[Aiming]:
    async with aiming_registry() as reg:
        yield reg


def _targets(canaries: dict[str, Canary]) -> list[tuple[str, str, int, bool]]:
    out = []
    for label, template, status, chain in TARGETS:
        if "{c6}" in template and "c6" not in canaries:
            continue
        out.append(
            (
                label,
                template.format(
                    c4=canaries["c4"].authority,
                    c6=canaries["c6"].authority if "c6" in canaries else "",
                    p1=canaries["c1"].port,
                    p4=canaries["c4"].port,
                ),
                status,
                chain,
            )
        )
    return out


async def _ask(session: aiohttp.ClientSession, url: str, method: str = "GET") -> tuple[int, bytes]:
    async with session.request(method, url, headers={"Range": "bytes=0-99"}) as r:
        return r.status, await r.read()


async def test_no_redirect_target_outside_the_policy_is_contacted_or_relayed(
    tmp_path: Path, canaries: dict[str, Canary], aiming: Aiming
) -> None:
    relay = agent_config(aiming.address)
    # no cached grants: every request asks the registry again
    stored = agent_config(
        aiming.address, cache=tmp_path / "cache", UpstreamConfig={"accessCheckTtl": 0}
    )
    answers: list[tuple[str, str, int, bytes]] = []
    async with Agent(relay) as a, Agent(stored) as b, aiohttp.ClientSession() as s:
        test_dns = MapResolver({"rebind.test": ["127.0.0.2"], "localhost": ["127.0.0.1"]})
        for agent in (a, b):
            agent.upstream.dns = test_dns
        for label, location, status, chain in _targets(canaries):
            aiming.target, aiming.status, aiming.chain = location, status, chain
            blob = f"/v2/lib/app/blobs/{DIGEST}?ns={aiming.address}"
            accel = f"/accelerator/http://{aiming.address}/v2/lib/app/blobs/{DIGEST}"
            for way, agent, path, method in (
                ("relay", a, blob, "GET"),
                ("store", b, blob, "GET"),
                ("accelerator", a, accel, "GET"),
                ("access check", b, blob, "HEAD"),
            ):
                aiming.head_too = method == "HEAD"
                got, body = await _ask(s, f"http://127.0.0.1:{agent.proxy_port}{path}", method)
                answers.append((label, way, got, body))
    assert len(answers) >= 4 * 19
    for label, way, got, body in answers:
        assert got >= 400, f"{label} via {way}: HTTP {got}"
        assert MARK not in body, f"{label} via {way}: canary bytes relayed"
        if got != 405 and body:
            assert b'"errors"' in body, f"{label} via {way}: not an OCI error body"
    contacted = {name: c.connections for name, c in canaries.items()}
    assert contacted == dict.fromkeys(canaries, 0)
    assert len(aiming.seen) >= len(answers)  # the registry itself was asked every time


async def test_redirects_to_listed_storage_are_followed_even_on_loopback(
    canaries: dict[str, Canary],
) -> None:
    """The other side of the policy: an exact ``redirectHosts`` entry (object storage
    inside the cluster) is reached wherever it is; a ``*.`` pattern only publicly."""

    async def data(request: web.Request) -> web.Response:
        return web.Response(body=BLOB)

    app = web.Application()
    app.router.add_get("/bucket/data", data)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    try:
        async with aiming_registry() as reg:
            listed = {
                "host": reg.address,
                "plainHTTP": True,
                "redirectHosts": [f"minio.test:{port}", "*.cdn.test"],
            }
            cfg = agent_config(reg.address, UpstreamConfig={"registries": [listed]})
            dns = MapResolver({"minio.test": ["127.0.0.1"], "edge.cdn.test": ["127.0.0.2"]})
            async with Agent(cfg) as a, aiohttp.ClientSession() as s:
                a.upstream.dns = dns
                url = f"http://127.0.0.1:{a.proxy_port}/v2/lib/app/blobs/{DIGEST}"
                reg.target = f"http://minio.test:{port}/bucket/data"
                async with s.get(url) as r:
                    assert r.status == 200
                    assert await r.read() == BLOB
                reg.target = f"http://edge.cdn.test:{canaries['c4'].port}/x"
                got, body = await _ask(s, url)
                assert got == 502 and MARK not in body
                assert b"internal addresses" in body
                reg.target = f"http://elsewhere.test:{port}/bucket/data"
                got, body = await _ask(s, url)
                assert got == 502 and b"redirectHosts" in body
    finally:
        await runner.cleanup()
    assert canaries["c4"].connections == 0


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("10.0.0.1", "private"),
        ("172.16.5.4", "private"),
        ("192.168.1.1", "private"),
        ("100.64.0.1", "shared address space"),
        ("fd00::1", "unique-local"),
        ("fec0::1", "site-local"),
        ("127.0.0.2", "loopback"),
        ("::1", "loopback"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("::ffff:169.254.169.254", "link-local (inside IPv6)"),
        ("64:ff9b::a9fe:a9fe", "link-local (inside IPv6)"),
        ("2002:a9fe:a9fe::1", "link-local (inside IPv6)"),
        ("192.0.2.1", "private"),
        ("8.8.8.8", None),
        ("2606:4700:4700::1111", None),
        ("::ffff:8.8.8.8", None),
    ],
)
def test_address_classification(address: str, reason: str | None) -> None:
    assert internal_reason(ipaddress.ip_address(address)) == reason


async def test_the_connect_time_check_refuses_internal_addresses_of_unlisted_names() -> None:
    """A DNS we control says where names point; nothing here opens a connection."""
    cfg = UpstreamConfig(
        default="reg.example.com",
        registries=(
            parse_config(
                {
                    "UpstreamConfig": {
                        "registries": [
                            {"host": "reg.example.com", "redirectHosts": ["minio.internal:9000"]}
                        ]
                    }
                }
            ).upstream.registries[0],
        ),
        restrict_to_listed=False,
    )
    dns = MapResolver(
        {
            "meta.test": ["169.254.169.254"],
            "inside.test": ["10.1.2.3", "fd00::5"],
            "mixed.test": ["10.0.0.1", "93.184.216.34"],
            "public.test": ["93.184.216.34"],
            "minio.internal": ["10.9.9.9"],
            "reg.example.com": ["10.0.0.5"],
        }
    )
    resolver = PolicyResolver(EgressPolicy(cfg), dns)
    for name in ("meta.test", "inside.test"):
        with pytest.raises(OSError, match="internal addresses"):
            await resolver.resolve(name, 80)
    assert [r["host"] for r in await resolver.resolve("mixed.test", 443)] == ["93.184.216.34"]
    assert [r["host"] for r in await resolver.resolve("public.test", 443)] == ["93.184.216.34"]
    # listed: the operator named them, internal addresses included
    assert [r["host"] for r in await resolver.resolve("minio.internal", 9000)] == ["10.9.9.9"]
    assert [r["host"] for r in await resolver.resolve("reg.example.com", 443)] == ["10.0.0.5"]
    # a listed name on another port is not listed
    with pytest.raises(OSError, match="internal addresses"):
        await resolver.resolve("reg.example.com", 22)
    assert resolver.refused == 3

    # and through the client: the refusal is the policy's, before anything is sent
    async with UpstreamClient(cfg, resolver=dns) as client:
        with pytest.raises(EgressRefusedError, match="internal addresses"):
            await client.request("GET", "meta.test", "/latest/meta-data/", {})
        with pytest.raises(EgressRefusedError, match="link-local"):
            await client.request("GET", "169.254.169.254", "/latest/meta-data/", {})
