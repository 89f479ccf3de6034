"""HTTP ``Range`` headers for blobs: one range of bytes, as registries and overlaybd send."""

from __future__ import annotations

import re
from dataclasses import dataclass

from shoal.errors import RangeNotSatisfiableError

_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")


@dataclass(frozen=True, slots=True)
class ByteRange:
    """``start`` and ``end`` inclusive, as in ``Content-Range``; ``end`` None means to EOF."""

    start: int
    end: int | None = None
    suffix: int | None = None

    def header(self) -> str:
        if self.suffix is not None:
            return f"bytes=-{self.suffix}"
        return f"bytes={self.start}-{'' if self.end is None else self.end}"

    def resolve(self, size: int) -> tuple[int, int]:
        """(first, last) inclusive within a blob of ``size`` bytes, or 416."""
        if self.suffix is not None:
            if self.suffix == 0 or size == 0:
                raise RangeNotSatisfiableError(f"range {self.header()} of {size} bytes")
            return max(size - self.suffix, 0), size - 1
        if self.start >= size:
            raise RangeNotSatisfiableError(f"range {self.header()} starts past {size} bytes")
        last = size - 1 if self.end is None else min(self.end, size - 1)
        return self.start, last


def parse_range(header: str) -> ByteRange:
    m = _RANGE_RE.fullmatch(header.strip())
    if m is None or (not m.group(1) and not m.group(2)):
        raise RangeNotSatisfiableError(f"unsupported Range header: {header[:80]!r}")
    first, last = m.group(1), m.group(2)
    if not first:
        return ByteRange(0, None, suffix=int(last))
    start = int(first)
    end = int(last) if last else None
    if end is not None and end < start:
        raise RangeNotSatisfiableError(f"range ends before it starts: {header[:80]!r}")
    return ByteRange(start, end)


def parse_content_range(header: str) -> tuple[int, int, int | None]:
    """``bytes a-b/size`` -> (a, b, size or None for ``*``)."""
    m = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+|\*)", header.strip())
    if m is None:
        raise RangeNotSatisfiableError(f"bad Content-Range: {header[:80]!r}")
    total = None if m.group(3) == "*" else int(m.group(3))
    return int(m.group(1)), int(m.group(2)), total
