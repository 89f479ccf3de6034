from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shoal.control import codec
from shoal.control.auth import (
    MAX_SKEW,
    NonceMemory,
    SignatureInvalidError,
    cluster_secret,
    sign,
    verify,
    verify_header,
)
from shoal.control.schema import HaveReport, LoadReport, UpdateRequest
from shoal.errors import ConfigInvalidError
from shoal.swarm import ParentOffer, owner, rank_roots

SECRET = b"0123456789abcdef"


def test_signature_binds_method_path_body_and_time() -> None:
    header = sign(SECRET, "POST", "/swarm/v1/join", b"{}", now=1000.0)
    verify(SECRET, header, "POST", "/swarm/v1/join", b"{}", now=1030.0)
    for args in (
        ("POST", "/swarm/v1/join", b"{ }", 1000.0),
        ("GET", "/swarm/v1/join", b"{}", 1000.0),
        ("POST", "/swarm/v1/update", b"{}", 1000.0),
        ("POST", "/swarm/v1/join", b"{}", 1000.0 + 500),
    ):
        with pytest.raises(SignatureInvalidError):
            verify(SECRET, header, *args)
    with pytest.raises(SignatureInvalidError):
        verify(b"another-secret-16", header, "POST", "/swarm/v1/join", b"{}", now=1000.0)
    for bad in (None, "", "t=x,mac=y", "garbage"):
        with pytest.raises(SignatureInvalidError):
            verify(SECRET, bad, "POST", "/swarm/v1/join", b"{}", now=1000.0)


def test_the_header_is_checked_alone_and_the_body_against_it() -> None:
    header = sign(SECRET, "POST", "/swarm/v1/join", b"{}", now=1000.0)
    signed = verify_header(SECRET, header, "POST", "/swarm/v1/join", now=1000.0)
    signed.check_body(b"{}")
    with pytest.raises(SignatureInvalidError, match="body does not match"):
        signed.check_body(b"{ }")
    forged = header.replace(signed.body_sha256, "0" * 64)
    with pytest.raises(SignatureInvalidError, match="bad signature"):
        verify_header(SECRET, forged, "POST", "/swarm/v1/join", now=1000.0)


def test_a_nonce_is_accepted_once_and_forgotten_after_the_window() -> None:
    memory = NonceMemory()
    header = sign(SECRET, "GET", "/healthz", b"", now=1000.0)
    verify(SECRET, header, "GET", "/healthz", b"", 1000.0, nonces=memory)
    with pytest.raises(SignatureInvalidError, match="replayed"):
        verify(SECRET, header, "GET", "/healthz", b"", 1001.0, nonces=memory)
    # the same request signed again carries a fresh nonce
    again = sign(SECRET, "GET", "/healthz", b"", now=1001.0)
    verify(SECRET, again, "GET", "/healthz", b"", 1001.0, nonces=memory)
    # a request a second for an hour: what is remembered stays within the window
    for t in range(3600):
        now = 1002.0 + t
        verify(SECRET, sign(SECRET, "GET", "/h", b"", now), "GET", "/h", b"", now, nonces=memory)
    assert len(memory) <= 2 * MAX_SKEW + 30
    assert memory.replays == 1


def test_cluster_secret_must_be_long_enough(tmp_path: object) -> None:
    assert cluster_secret("x" * 16, "") == b"x" * 16
    with pytest.raises(ConfigInvalidError, match="16 bytes"):
        cluster_secret("short", "")
    with pytest.raises(ConfigInvalidError, match="cannot read"):
        cluster_secret("", "/nonexistent/secret")


@given(
    st.lists(st.text(min_size=1, max_size=20), min_size=1, max_size=8, unique=True),
    st.text(min_size=1, max_size=80),
)
def test_rendezvous_owner_is_stable_when_another_root_leaves(roots: list[str], digest: str) -> None:
    first = owner(digest, roots)
    assert rank_roots(digest, roots)[0] == first
    for gone in roots:
        if gone != first:
            assert owner(digest, [r for r in roots if r != gone]) == first


def test_reports_and_offers_round_trip_through_json() -> None:
    req = UpdateRequest("10.0.0.1:65002", [HaveReport("sha256:x", [1, 2]), LoadReport(3, 1e6)])
    assert msgspec.json.decode(msgspec.json.encode(req), type=UpdateRequest) == req
    offer = ParentOffer("p:1", "zone-a", have=(1 << 300) | 5, fetching=2, only=-1)
    assert codec.offer(codec.offer_wire(offer)) == offer
    striped = ParentOffer("p:1", "", have=1, fetching=0, only=0b1010, seed=True)
    assert codec.offer(codec.offer_wire(striped)) == striped
