"""Content digests (``algorithm:hex``) and incremental verification."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from shoal.errors import DigestInvalidError, DigestMismatchError

_HEX_LEN = {"sha256": 64, "sha512": 128}
_DIGEST_RE = re.compile(r"^(sha256|sha512):([a-f0-9]+)$")


@dataclass(frozen=True, slots=True)
class Digest:
    algorithm: str
    hex: str

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"

    def hasher(self) -> hashlib._Hash:
        return hashlib.new(self.algorithm)


def parse_digest(text: str) -> Digest:
    """Accept only the algorithms registries use; anything else is ``DIGEST_INVALID``."""
    m = _DIGEST_RE.fullmatch(text)
    if m is None or len(m.group(2)) != _HEX_LEN[m.group(1)]:
        shown = text if len(text) <= 140 else text[:140] + "..."
        raise DigestInvalidError(f"invalid digest: {shown!r}")
    return Digest(m.group(1), m.group(2))


def is_digest(text: str) -> bool:
    try:
        parse_digest(text)
    except DigestInvalidError:
        return False
    return True


def digest_of(data: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


class DigestVerifier:
    """Feed bytes as they stream past; ``check()`` at the end raises on a mismatch."""

    __slots__ = ("_h", "expected", "size")

    def __init__(self, expected: Digest) -> None:
        self.expected = expected
        self._h = expected.hasher()
        self.size = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self._h.update(data)
        self.size += len(data)

    def matches(self) -> bool:
        return self._h.hexdigest() == self.expected.hex

    def check(self) -> None:
        got = self._h.hexdigest()
        if got != self.expected.hex:
            raise DigestMismatchError(
                f"content of {self.expected} hashes to {self.expected.algorithm}:{got}"
            )
