"""Repository names, tags and references, validated by the distribution spec's grammar.

Validation happens before anything is sent upstream: a name such as ``../../etc`` or a
reference with a newline must be refused here, not passed along as a URL path.
"""

from __future__ import annotations

import re

from shoal.errors import NameInvalidError
from shoal.oci.digest import Digest, parse_digest

_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
NAME_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
TAG_RE = re.compile(r"^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$")
MAX_NAME = 255


def check_name(name: str) -> str:
    if len(name) > MAX_NAME or NAME_RE.fullmatch(name) is None:
        shown = name if len(name) <= 80 else name[:80] + "..."
        raise NameInvalidError(f"invalid repository name: {shown!r}")
    return name


def parse_manifest_reference(reference: str) -> str | Digest:
    """A tag stays a string; anything with a ``:`` must be a valid digest."""
    if ":" in reference:
        return parse_digest(reference)
    if TAG_RE.fullmatch(reference) is None:
        shown = reference if len(reference) <= 80 else reference[:80] + "..."
        raise NameInvalidError(f"invalid tag: {shown!r}")
    return reference


def split_image(image: str) -> tuple[str, str, str]:
    """``host[:port]/repo[:tag|@digest]`` -> (host, repo, reference); host is required."""
    rest, at, digest = image.partition("@")
    host, slash, path = rest.partition("/")
    if not slash or not path:
        raise NameInvalidError(f"image reference needs a registry host: {image!r}")
    if at:
        repo = path
        reference = digest
        parse_digest(reference)
    else:
        repo, colon, tag = path.rpartition(":")
        if not colon or "/" in tag:
            repo, reference = path, "latest"
        else:
            reference = tag
    check_name(repo)
    parse_manifest_reference(reference)
    return host, repo, reference
