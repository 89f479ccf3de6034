from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shoal.errors import (
    DigestInvalidError,
    DigestMismatchError,
    NameInvalidError,
    RangeNotSatisfiableError,
    UpstreamUnknownError,
)
from shoal.oci.digest import DigestVerifier, parse_digest
from shoal.oci.range import parse_range
from shoal.oci.reference import check_name, parse_manifest_reference, split_image
from shoal.oci.upstream import derive_upstream, distribute, undistribute

HEX = "a" * 64


def test_digest_grammar() -> None:
    assert str(parse_digest(f"sha256:{HEX}")) == f"sha256:{HEX}"
    for bad in (f"sha256:{HEX[:-1]}", f"SHA256:{HEX}", f"sha256:{HEX.upper()}", "md5:abc", ""):
        with pytest.raises(DigestInvalidError):
            parse_digest(bad)


def test_verifier_detects_a_flipped_byte() -> None:
    data = b"x" * 1000
    good = DigestVerifier(parse_digest(f"sha256:{hashlib.sha256(data).hexdigest()}"))
    good.update(data[:10])
    good.update(data[10:])
    good.check()
    bad = DigestVerifier(parse_digest(f"sha256:{hashlib.sha256(data).hexdigest()}"))
    bad.update(b"y" + data[1:])
    assert not bad.matches()
    with pytest.raises(DigestMismatchError):
        bad.check()


@pytest.mark.parametrize("name", ["library/nginx", "a", "my-org/sub.path/app_1", "a__b/c--d"])
def test_valid_names(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize(
    "name", ["", "../etc", "a/../b", "A/b", "a//b", "/a", "a/", "a b", "a\nb", "a" * 256]
)
def test_invalid_names(name: str) -> None:
    with pytest.raises(NameInvalidError):
        check_name(name)


def test_manifest_reference_is_tag_or_digest() -> None:
    assert parse_manifest_reference("v1.2_3") == "v1.2_3"
    assert str(parse_manifest_reference(f"sha256:{HEX}")) == f"sha256:{HEX}"
    for bad in ("-v1", "a" * 129, "v1\n", "sha256:zz"):
        with pytest.raises((NameInvalidError, DigestInvalidError)):
            parse_manifest_reference(bad)


def test_split_image() -> None:
    assert split_image("reg.io:5000/a/b:1") == ("reg.io:5000", "a/b", "1")
    assert split_image("reg.io/a/b") == ("reg.io", "a/b", "latest")
    assert split_image(f"reg.io/a@sha256:{HEX}") == ("reg.io", "a", f"sha256:{HEX}")
    with pytest.raises(NameInvalidError):
        split_image("nginx")


def test_upstream_derivation_order() -> None:
    dist = "test-registry-vpc.distributed.cn-hangzhou.cr.aliyuncs.com:65001"
    real = "test-registry-vpc.cn-hangzhou.cr.aliyuncs.com"
    assert derive_upstream("reg.io:5000", dist, "default.io") == "reg.io:5000"
    assert derive_upstream(None, dist, "default.io") == real
    assert derive_upstream(dist, "127.0.0.1:65001", "") == real
    assert derive_upstream(None, "127.0.0.1:65001", "default.io") == "default.io"
    assert derive_upstream("docker.io", None, "") == "registry-1.docker.io"
    assert derive_upstream(None, "docker.distributed.io:65001", "") == "registry-1.docker.io"
    assert derive_upstream("docker.distributed.io:65001", None, "") == "registry-1.docker.io"
    with pytest.raises(UpstreamUnknownError):
        derive_upstream(None, "127.0.0.1:65001", "")
    with pytest.raises(UpstreamUnknownError):
        derive_upstream("evil/../x", None, "")


def test_distribute_round_trips_and_skips_hosts_that_cannot_take_the_form() -> None:
    assert distribute("test.cn-hangzhou.cr.aliyuncs.com", 65001) == (
        "test.distributed.cn-hangzhou.cr.aliyuncs.com:65001"
    )
    for host in ("localhost", "127.0.0.1:5000", "[::1]:5000", "registry"):
        assert distribute(host, 65001) is None
    assert undistribute("a.distributed.b.c:65001") == "a.b.c"
    assert undistribute("a.b.c") is None


@given(st.from_regex(r"[a-z][a-z0-9-]{0,10}(\.[a-z][a-z0-9-]{0,10}){1,3}", fullmatch=True))
def test_distribute_then_undistribute_is_identity(host: str) -> None:
    d = distribute(host, 65001)
    assert d is not None
    assert undistribute(d) == host


def test_ranges() -> None:
    assert parse_range("bytes=0-99").resolve(1000) == (0, 99)
    assert parse_range("bytes=900-").resolve(1000) == (900, 999)
    assert parse_range("bytes=-100").resolve(1000) == (900, 999)
    assert parse_range("bytes=990-2000").resolve(1000) == (990, 999)
    for bad in ("bytes=5-1", "bytes=-", "items=0-1", "bytes=0-1,5-6"):
        with pytest.raises(RangeNotSatisfiableError):
            parse_range(bad)
    with pytest.raises(RangeNotSatisfiableError):
        parse_range("bytes=1000-").resolve(1000)
