"""Just enough bencode to read a torrent's info hash and a tracker's scrape answer.

The tracker (opentracker as Debian builds it) serves only whitelisted info hashes, and
the seeder must be known to it before the nodes start; both need the info hash, which is
the SHA-1 of the raw bytes of the torrent's ``info`` value.
"""

from __future__ import annotations

import hashlib

from shoal.bench.errors import BenchError

BValue = int | bytes | list["BValue"] | dict[bytes, "BValue"]


def decode(data: bytes) -> BValue:
    value, end = _decode(data, 0)
    if end != len(data):
        raise BenchError("bencode: trailing bytes")
    return value


def _decode(data: bytes, i: int) -> tuple[BValue, int]:
    try:
        c = data[i : i + 1]
        if c == b"i":
            end = data.index(b"e", i)
            return int(data[i + 1 : end]), end + 1
        if c == b"l":
            items: list[BValue] = []
            i += 1
            while data[i : i + 1] != b"e":
                item, i = _decode(data, i)
                items.append(item)
            return items, i + 1
        if c == b"d":
            out: dict[bytes, BValue] = {}
            i += 1
            while data[i : i + 1] != b"e":
                key, i = _decode(data, i)
                if not isinstance(key, bytes):
                    raise BenchError("bencode: dictionary key is not a string")
                out[key], i = _decode(data, i)
            return out, i + 1
        colon = data.index(b":", i)
        n = int(data[i:colon])
        return data[colon + 1 : colon + 1 + n], colon + 1 + n
    except (ValueError, IndexError) as exc:
        raise BenchError(f"bencode: malformed at byte {i}") from exc


def info_hash(torrent: bytes) -> bytes:
    """SHA-1 of the raw ``info`` value of a (single-level) torrent dictionary."""
    if torrent[:1] != b"d":
        raise BenchError("torrent: not a dictionary")
    i = 1
    while torrent[i : i + 1] != b"e":
        key, i = _decode(torrent, i)
        start = i
        _, i = _decode(torrent, i)
        if key == b"info":
            return hashlib.sha1(torrent[start:i]).digest()
    raise BenchError("torrent: no info dictionary")


def scrape_complete(answer: bytes, digest: bytes) -> int:
    """Seeders the tracker knows for ``digest``, from a ``/scrape`` answer."""
    doc = decode(answer)
    files = doc.get(b"files") if isinstance(doc, dict) else None
    entry = files.get(digest) if isinstance(files, dict) else None
    complete = entry.get(b"complete") if isinstance(entry, dict) else None
    return complete if isinstance(complete, int) else 0
