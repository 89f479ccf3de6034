"""The attacker of ``test_sybil``, as a process of its own (an attacker runs on its own
node, not in the measuring client's event loop): ``COUNT`` signed joins of ``blobs`` as
peers ``127.0.0.<s>:<port>`` that do not exist, sent from ``SOURCES`` addresses
127.0.0.<A>, 127.0.0.<A+1>, ... (joiner ``i`` from address ``A + i % SOURCES``).

``python -m tests.security.sybil_flood ROOT CAFILE SECRET ORIGIN REPO FIRST COUNT A SOURCES
BLOB...`` prints one JSON line: the count of each answer status and every peer offered.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import sys
import time
from collections import Counter

import aiohttp
import msgspec

from shoal.control.auth import HEADER, sign
from shoal.control.schema import BlobState, JoinRequest, Source


async def flood(
    root: str,
    cafile: str,
    secret: bytes,
    origin: str,
    repo: str,
    first: int,
    count: int,
    address: int,
    sources: int,
    blobs: list[str],
) -> dict[str, object]:
    tls = ssl.create_default_context(cafile=cafile)
    answers: Counter[int] = Counter()
    offered: set[str] = set()
    sessions = [
        aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                ssl=tls, local_addr=(f"127.0.0.{address + n}", 0), limit=max(1, 32 // sources)
            )
        )
        for n in range(sources)
    ]

    async def one(i: int) -> None:
        peer = f"127.0.0.{address + i % sources}:{20000 + i}"
        req = JoinRequest(peer, blobs[i % len(blobs)], Source(origin, repo))
        body = msgspec.json.encode(req)
        headers = {HEADER: sign(secret, "POST", "/swarm/v1/join", body, time.time())}
        session = sessions[i % sources]
        async with session.post(f"{root}/swarm/v1/join", data=body, headers=headers) as r:
            answers[r.status] += 1
            if r.status == 200:
                state = msgspec.json.decode(await r.read(), type=BlobState)
                offered.update(o.peer for o in state.parents)

    try:
        await asyncio.gather(*(one(i) for i in range(first, first + count)))
    finally:
        for session in sessions:
            await session.close()
    return {"answers": {str(k): v for k, v in answers.items()}, "offered": sorted(offered)}


def main() -> None:
    root, cafile, secret, origin, repo, first, count, address, sources, *blobs = sys.argv[1:]
    out = asyncio.run(
        flood(
            root,
            cafile,
            secret.encode(),
            origin,
            repo,
            int(first),
            int(count),
            int(address),
            int(sources),
            blobs,
        )
    )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
