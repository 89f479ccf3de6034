"""Manifest and index media types and the shapes shoal reads from them."""

from __future__ import annotations

import json
from typing import Literal, NotRequired, TypedDict

from shoal.errors import ManifestInvalidError

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
#: what the mirror asks for when the client sent no Accept header
ACCEPT_ALL = ", ".join((*MANIFEST_TYPES, *INDEX_TYPES))
#: manifests larger than this are refused (containerd's own limit is 4 MiB)
MAX_MANIFEST_BYTES = 4 << 20


class Platform(TypedDict, total=False):
    architecture: str
    os: str
    variant: str


class Descriptor(TypedDict):
    mediaType: str
    digest: str
    size: int
    platform: NotRequired[Platform]


class ImageManifest(TypedDict):
    schemaVersion: Literal[2]
    mediaType: NotRequired[str]
    config: Descriptor
    layers: list[Descriptor]


class ImageIndex(TypedDict):
    schemaVersion: Literal[2]
    mediaType: NotRequired[str]
    manifests: list[Descriptor]


def media_type_of(body: bytes, content_type: str | None) -> str:
    if content_type and content_type.split(";")[0].strip() in (*MANIFEST_TYPES, *INDEX_TYPES):
        return content_type.split(";")[0].strip()
    doc = _load(body)
    media = doc.get("mediaType")
    if isinstance(media, str):
        return media
    return OCI_INDEX if "manifests" in doc else OCI_MANIFEST


def _load(body: bytes) -> dict[str, object]:
    try:
        doc = json.loads(body)
    except ValueError as exc:
        raise ManifestInvalidError("manifest is not JSON") from exc
    if not isinstance(doc, dict):
        raise ManifestInvalidError("manifest is not a JSON object")
    return doc


def _descriptor(raw: object) -> Descriptor:
    if not isinstance(raw, dict):
        raise ManifestInvalidError("descriptor is not an object")
    media, digest, size = raw.get("mediaType"), raw.get("digest"), raw.get("size")
    if not isinstance(media, str) or not isinstance(digest, str) or not isinstance(size, int):
        raise ManifestInvalidError("descriptor lacks mediaType, digest or size")
    desc = Descriptor(mediaType=media, digest=digest, size=size)
    platform = raw.get("platform")
    if isinstance(platform, dict):
        plat = Platform()
        if isinstance(platform.get("architecture"), str):
            plat["architecture"] = platform["architecture"]
        if isinstance(platform.get("os"), str):
            plat["os"] = platform["os"]
        if isinstance(platform.get("variant"), str):
            plat["variant"] = platform["variant"]
        desc["platform"] = plat
    return desc


def parse_manifest(body: bytes) -> ImageManifest:
    doc = _load(body)
    layers = doc.get("layers")
    if not isinstance(layers, list):
        raise ManifestInvalidError("manifest has no layers")
    return ImageManifest(
        schemaVersion=2,
        config=_descriptor(doc.get("config")),
        layers=[_descriptor(layer) for layer in layers],
    )


def parse_index(body: bytes) -> ImageIndex:
    doc = _load(body)
    manifests = doc.get("manifests")
    if not isinstance(manifests, list):
        raise ManifestInvalidError("index has no manifests")
    return ImageIndex(schemaVersion=2, manifests=[_descriptor(m) for m in manifests])


def pick_platform(index: ImageIndex, os: str = "linux", arch: str = "amd64") -> Descriptor:
    for desc in index["manifests"]:
        platform = desc.get("platform", {})
        if platform.get("os") == os and platform.get("architecture") == arch:
            return desc
    raise ManifestInvalidError(f"index has no manifest for {os}/{arch}")
