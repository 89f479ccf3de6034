"""The root's word on a blob, as a download knows it: piece hashes and the verdict.

A piece is trusted only against the root's hash, never the parent's word. Reads go out
before the hash is known (a parent may hold a piece the root hashed a moment ago), so
bytes that arrive first wait here; the root's hashes are a prefix (it hashes pieces in
order as the origin sends them), asked for one long poll at a time. An answer that
brought nothing new is followed by a pause (``hash_pause``) before the next ask.

Beside each hash the root may give the piece's chunk hashes (``cache/chunks.py``), only
in answers to a hash ask: a piece whose chunk hashes are known is checked, and passed on,
chunk by chunk while it arrives. A fetch whose bytes start before they are known asks
(``want``); ``b""`` means the root has none for that piece (it is checked whole).

At the end the root's verdict on the whole digest (``BlobView.complete``) lets the agent
seal the blob without hashing it again; asked every ``verdict_poll`` s, at most
``verdict_tries`` times, after which (or when the root is silent) the agent checks the
digest itself.
"""

from __future__ import annotations

from shoal.config import DownloadPolicy
from shoal.swarm.messages import BlobView, PeerId


class HashBook:
    def __init__(self, policy: DownloadPolicy) -> None:
        self.policy = policy
        self.hashes: list[bytes | None] = []
        #: each piece's chunk hashes, ``b""`` if the root has none
        self.chunks: list[bytes | None] = []
        #: received pieces waiting for their hash: index -> the parents that sent them
        self.held: dict[int, list[PeerId]] = {}
        #: pieces arriving whose chunk hashes are not known yet
        self.wanted: set[int] = set()
        self.news = 0  #: answers that brought something new
        self.asking = False  #: an ask is out
        self.after = float("-inf")  #: no ask before this time
        self.vouched = False  #: the root checked the whole digest
        self.verdict_out = False
        self.verdict_after = float("-inf")
        self._verdicts = 0

    def __repr__(self) -> str:
        return (
            f"<HashBook {self.first_unknown()}/{len(self.hashes)} known, {len(self.held)} held, "
            f"{len(self.wanted)} want chunks>"
        )

    def open(self, count: int) -> None:
        self.hashes = [None] * count
        self.chunks = [None] * count

    def known(self, index: int) -> bytes | None:
        return self.hashes[index] if 0 <= index < len(self.hashes) else None

    def chunks_of(self, index: int) -> bytes | None:
        """The piece's chunk hashes; ``b""`` if the root has none, None if not known yet."""
        return self.chunks[index] if 0 <= index < len(self.chunks) else None

    def first_unknown(self) -> int:
        return next((i for i, h in enumerate(self.hashes) if h is None), len(self.hashes))

    def hold(self, index: int, parent: PeerId) -> None:
        self.held.setdefault(index, []).append(parent)
        self.wanted.discard(index)

    def want(self, index: int) -> None:
        """Bytes of ``index`` started arriving: its chunk hashes are wanted, if unknown."""
        if self.chunks_of(index) is None and 0 <= index < len(self.chunks):
            self.wanted.add(index)

    @property
    def waiting(self) -> bool:
        """Something here waits for an answer: a hash, or chunk hashes."""
        return bool(self.held or self.wanted)

    def may_ask(self, now: float) -> bool:
        return self.waiting and not self.asking and now >= self.after

    def ask(self) -> int:
        """An ask goes out: from which piece on (the first hash or, if sooner, the first
        chunk hashes wanted)."""
        self.asking = True
        first = self.first_unknown()
        return min(first, min(self.wanted)) if self.wanted else first

    def failed(self, now: float) -> None:
        """The ask got no answer: try again after a probe's interval."""
        self.asking = False
        self.after = now + self.policy.probe_interval

    def verdict_due(self, now: float) -> bool:
        """Time to ask the root for its verdict (marks the ask as out)."""
        if self.verdict_out or now < self.verdict_after:
            return False
        self.verdict_out = True
        return True

    def verdict(self, now: float) -> bool | None:
        """An answer to the verdict ask came (``take`` has read it): True to trust the
        root's check, False to check the digest here, None to ask again later."""
        self.verdict_out = False
        if self.vouched:
            return True
        self._verdicts += 1
        if self._verdicts >= self.policy.verdict_tries:
            return False
        self.verdict_after = now + self.policy.verdict_poll
        return None

    def take(self, view: BlobView, now: float) -> tuple[list[tuple[PeerId, int, bytes]], bool]:
        """Hashes from an answer; what now may be stored, and whether to ask again now."""
        self.vouched = self.vouched or view.complete
        hashes = self.hashes
        news = False
        chunks = view.chunks if len(view.chunks) == len(view.hashes) else ()
        for offset, h in enumerate(view.hashes):
            i = view.hashes_from + offset
            if 0 <= i < len(hashes) and hashes[i] is None:
                hashes[i] = h
                news = True
            if chunks and 0 <= i < len(hashes) and self.chunks[i] is None:
                self.chunks[i] = chunks[offset]
                self.wanted.discard(i)
                news = True
        self.news += news
        ready: list[tuple[PeerId, int, bytes]] = []
        for index in [i for i in self.held if hashes[i] is not None]:
            sha = hashes[index]
            assert sha is not None
            ready += [(p, index, sha) for p in self.held.pop(index)]
        again = self.waiting and not self.asking and news
        if self.waiting and not self.asking and not news:
            self.after = now + self.policy.hash_pause
        return ready, again
