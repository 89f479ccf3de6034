from __future__ import annotations

import pytest

from shoal.webhook.images import (
    HostPatterns,
    distributed_endpoint,
    origin_of,
    parse_image,
    registry_of_auth_key,
    rewrite_image,
)

ALL = HostPatterns.of(["*"])
DIGEST = "sha256:" + "0123456789abcdef" * 4


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        (
            "test-registry-vpc.cn-hangzhou.cr.aliyuncs.com/docker-builder/nginx:latest",
            "test-registry-vpc.distributed.cn-hangzhou.cr.aliyuncs.com:65001/docker-builder/nginx:latest",
        ),
        ("nginx", "docker.distributed.io:65001/library/nginx"),
        ("nginx:1.27", "docker.distributed.io:65001/library/nginx:1.27"),
        ("bitnami/redis:7.2", "docker.distributed.io:65001/bitnami/redis:7.2"),
        ("docker.io/library/busybox:1.36", "docker.distributed.io:65001/library/busybox:1.36"),
        ("index.docker.io/library/busybox", "docker.distributed.io:65001/library/busybox"),
        (
            "registry-1.docker.io/library/busybox",
            "registry-1.distributed.docker.io:65001/library/busybox",
        ),
        (f"ghcr.io/org/app@{DIGEST}", f"ghcr.distributed.io:65001/org/app@{DIGEST}"),
        (f"quay.io/org/app:v1@{DIGEST}", f"quay.distributed.io:65001/org/app:v1@{DIGEST}"),
        ("registry.k8s.io/pause:3.10", "registry.distributed.k8s.io:65001/pause:3.10"),
    ],
)
def test_rewrite_keeps_everything_but_the_host(image: str, expected: str) -> None:
    rw = rewrite_image(image, ALL, 65001)
    assert rw is not None
    assert rw.rewritten == expected
    assert rw.original == image


@pytest.mark.parametrize(
    "image",
    [
        "localhost/app:1",
        "localhost:5000/app:1",
        "127.0.0.1:5000/app:1",
        "10.0.0.7/app:1",
        "[::1]:5000/app:1",
        "registry.example.com:5000/app:1",  # a port of its own: the form has room for one
        "myregistry:5000/app",
        "test-registry-vpc.distributed.cn-hangzhou.cr.aliyuncs.com:65001/docker-builder/nginx:latest",
        "UPPER/case",
        "nginx:bad tag",
        "nginx@sha256:short",
        "",
    ],
)
def test_left_alone(image: str) -> None:
    assert rewrite_image(image, ALL, 65001) is None


def test_patterns_choose_registries() -> None:
    acr = HostPatterns.of(["*.cr.aliyuncs.com", "docker.io"])
    assert rewrite_image("a-vpc.cn-beijing.cr.aliyuncs.com/x/y:1", acr, 65001) is not None
    assert rewrite_image("nginx", acr, 65001) is not None
    assert rewrite_image("ghcr.io/x/y", acr, 65001) is None
    assert HostPatterns.of(["Docker.IO"]).match("index.docker.io")


def test_port_from_config() -> None:
    rw = rewrite_image("ghcr.io/x/y:1", ALL, 30001)
    assert rw is not None and rw.endpoint == "ghcr.distributed.io:30001"


def test_endpoint_roundtrip() -> None:
    ep = distributed_endpoint("a.b.c", 65001)
    assert ep == "a.distributed.b.c:65001"
    assert origin_of(ep) == "a.b.c"
    assert origin_of("docker.distributed.io:65001") == "docker.io"
    assert origin_of("ghcr.io") is None


def test_parse_normalises_like_containerd() -> None:
    ref = parse_image("nginx")
    assert ref is not None and (ref.host, ref.path, ref.tail) == ("docker.io", "library/nginx", "")
    ref = parse_image("localhost/app")
    assert ref is not None and ref.host == "localhost"


@pytest.mark.parametrize(
    ("key", "host"),
    [
        ("https://index.docker.io/v1/", "docker.io"),
        ("docker.io", "docker.io"),
        (
            "test-registry-vpc.cn-hangzhou.cr.aliyuncs.com",
            "test-registry-vpc.cn-hangzhou.cr.aliyuncs.com",
        ),
        ("https://ghcr.io", "ghcr.io"),
        ("registry.example.com:5000", "registry.example.com:5000"),
        ("", None),
    ],
)
def test_auth_keys(key: str, host: str | None) -> None:
    assert registry_of_auth_key(key) == host
