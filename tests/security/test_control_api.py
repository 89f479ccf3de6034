"""The control API attacked the way a compromised node or a hostile pod would: replays,
bodies sent unsigned, oversized or mismatched, and joins naming a host to fetch from.

A real root (``shoal.root.Root``, in this process) over real TLS with a CA made for the
test; a signed request is made with the cluster secret, as an agent (or an attacker
who stole it) makes one.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from pathlib import Path

import msgspec

from shoal.control.auth import HEADER, sign
from shoal.control.schema import BlobState, HoldRequest, JoinRequest, Source
from tests.security.canary import DIGEST, aiming_registry, canary
from tests.security.helpers import (
    SECRET,
    RootUnderTest,
    handshake_peer,
    root_under_test,
    signed_headers,
)


async def test_a_replayed_request_gets_401(tmp_path: Path) -> None:
    async with root_under_test(tmp_path, "127.0.0.1:5000") as rt:
        path = f"/swarm/v1/blobs/{DIGEST}?known=0"
        captured = signed_headers("GET", path, b"")
        first = await rt.call("GET", path, headers=captured)
        again = await rt.call("GET", path, headers=captured)
        fresh = await rt.call("GET", path)
    assert first[0] == 200
    assert again[0] == 401 and b"replayed" in again[1]
    assert fresh[0] == 200
    assert rt.root.control_port


async def _raw(rt: RootUnderTest, head: bytes, body: bytes = b"") -> tuple[bytes, float]:
    """Send ``head`` (and ``body``) over TLS; the answer and how long it took."""
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", rt.root.control_port, ssl=rt.tls(), server_hostname="127.0.0.1"
    )
    start = time.monotonic()
    writer.write(head + body)
    await writer.drain()
    try:
        async with asyncio.timeout(5):
            answer = await reader.read(4096)
    finally:
        writer.close()
    return answer, time.monotonic() - start


def _head(path: str, length: int, signature: str | None) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: root", f"Content-Length: {length}"]
    if signature is not None:
        lines.append(f"{HEADER}: {signature}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def test_the_signature_and_length_are_checked_before_any_body_byte(tmp_path: Path) -> None:
    """Headers announcing 4 MiB, and not one body byte sent: the root answers anyway."""
    four = 4 << 20
    async with root_under_test(tmp_path, "127.0.0.1:5000") as rt:
        path = "/swarm/v1/join"
        unsigned, t1 = await _raw(rt, _head(path, four, None))
        forged = sign(b"not-the-cluster-secret!", "POST", path, b"x" * four, time.time())
        forged_answer, t2 = await _raw(rt, _head(path, four, forged))
        # signed for real, but more than a join may carry: refused unread, too
        big = b"x" * four
        real = sign(SECRET.encode(), "POST", path, big, time.time())
        too_big, t3 = await _raw(rt, _head(path, four, real))
        # a body that is not the one signed
        body = msgspec.json.encode(HoldRequest("127.0.0.1:1", []))
        other = sign(SECRET.encode(), "POST", "/swarm/v1/hold", body + b" ", time.time())
        swapped, _ = await _raw(rt, _head("/swarm/v1/hold", len(body), other), body)
    assert unsigned.startswith(b"HTTP/1.1 401")
    assert forged_answer.startswith(b"HTTP/1.1 401")
    assert too_big.startswith(b"HTTP/1.1 413")
    assert swapped.startswith(b"HTTP/1.1 401") and b"body does not match" in swapped
    assert b'"errors"' in unsigned and b"UNAUTHORIZED" in unsigned
    assert max(t1, t2, t3) < 2.0  # answered without waiting for a body that never came


async def test_the_root_contacts_no_unlisted_host(tmp_path: Path) -> None:
    """A signed join naming an unlisted ``source.host``, and a listed registry that
    redirects to an internal address: the root fetches from neither."""
    async with (
        canary("127.0.0.2") as internal,
        aiming_registry() as listed,
        handshake_peer() as agent,
        root_under_test(tmp_path, listed.address) as rt,
    ):
        listed.target = f"http://{internal.authority}/latest/meta-data/"
        answers = []
        for host in (internal.authority, f"127.0.0.1:{internal.port}", listed.address):
            req = JoinRequest(agent.peer_id, DIGEST, Source(host, "lib/app", "Basic eDp5"))
            body = msgspec.json.encode(req)
            status, payload = await rt.call("POST", "/swarm/v1/join", body)
            assert status == 200, payload
            answers.append(msgspec.json.decode(payload, type=BlobState))
    assert internal.connections == 0
    assert all(a.failure == "source-refused" and not a.parents for a in answers)
    assert "not served" in answers[0].reason
    assert "refused" in answers[2].reason
    assert [s for s in listed.seen if s.startswith("GET")]  # the listed one was asked
    assert agent.handshakes >= 1  # the joiner itself was vetted over the peer handshake


async def test_the_root_refuses_plain_http_when_tls_is_on(tmp_path: Path) -> None:
    async with root_under_test(tmp_path, "127.0.0.1:5000") as rt:
        reader, writer = await asyncio.open_connection("127.0.0.1", rt.root.control_port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: root\r\n\r\n")
        await writer.drain()
        async with asyncio.timeout(5):
            answer = await reader.read(4096)
        writer.close()
        assert not answer.startswith(b"HTTP/1.1 200")
        ctx = ssl.create_default_context()  # the system's CAs, not the cluster's
        try:
            await asyncio.open_connection(
                "127.0.0.1", rt.root.control_port, ssl=ctx, server_hostname="127.0.0.1"
            )
        except ssl.SSLCertVerificationError:
            pass
        else:
            raise AssertionError("a certificate outside the cluster CA was accepted")


async def test_a_silent_tls_client_is_closed_after_the_header_timeout(tmp_path: Path) -> None:
    """A connection that never says ClientHello holds a root's descriptor for
    ``headerTimeout``, not for asyncio's 60 s handshake timeout."""
    async with root_under_test(tmp_path, "127.0.0.1:5000", ProxyConfig={"headerTimeout": 1}) as rt:
        reader, writer = await asyncio.open_connection("127.0.0.1", rt.root.control_port)
        start = time.monotonic()
        async with asyncio.timeout(10):
            assert await reader.read(4096) == b""
        writer.close()
        waited = time.monotonic() - start
        status, _ = await rt.call("GET", f"/swarm/v1/blobs/{DIGEST}?known=0")
    assert 0.5 < waited < 4
    assert status == 200
