"""The access check against a real password-protected registry."""

from __future__ import annotations

from pathlib import Path

import pytest

from shoal.config import RegistryConfig, UpstreamConfig
from shoal.errors import BlobUnknownError
from shoal.lab.image import BuiltImage, basic_authorization, build_image, push_image
from shoal.lab.origin import OriginRegistry
from shoal.oci.digest import parse_digest
from shoal.registry.access import AccessChecker, AccessDenied
from shoal.registry.upstream import UpstreamClient
from tests.conftest import PASSWORD, USER


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


def upstream_for(origin: OriginRegistry) -> UpstreamClient:
    registry = RegistryConfig(host=origin.address, plain_http=True)
    return UpstreamClient(UpstreamConfig(default=origin.address, registries=(registry,)))


async def test_grants_are_cached_per_credential_repo_and_digest(
    private_origin: OriginRegistry, private_image: BuiltImage
) -> None:
    clock = Clock()
    digest = parse_digest(private_image.layers[0].digest)
    good = basic_authorization(USER, PASSWORD)
    async with upstream_for(private_origin) as up:
        checker = AccessChecker(up, ttl=30, clock=clock)
        granted = await checker.check(private_origin.address, private_image.repo, digest, good)
        assert granted.size == private_image.layers[0].size
        await checker.check(private_origin.address, private_image.repo, digest, good)
        assert (checker.checks, checker.hits) == (1, 1)
        with pytest.raises(AccessDenied) as info:
            await checker.check(
                private_origin.address, private_image.repo, digest, basic_authorization(USER, "x")
            )
        assert info.value.http_status == 401
        assert info.value.challenge == 'Basic realm="shoal-lab"'
        with pytest.raises(AccessDenied):
            await checker.check(private_origin.address, private_image.repo, digest, "")
        clock.now += 31
        await checker.check(private_origin.address, private_image.repo, digest, good)
        assert checker.checks == 4


async def test_a_blob_of_another_repository_is_not_granted(
    tmp_path: Path, private_origin: OriginRegistry, private_image: BuiltImage
) -> None:
    other = build_image(tmp_path / "other", repo="team/other", tag="1", layer_sizes=[5000], seed=9)
    good = basic_authorization(USER, PASSWORD)
    await push_image(private_origin.url, other, authorization=good)
    async with upstream_for(private_origin) as up:
        checker = AccessChecker(up, ttl=30)
        with pytest.raises(BlobUnknownError):
            await checker.check(
                private_origin.address,
                private_image.repo,
                parse_digest(other.layers[0].digest),
                good,
            )
