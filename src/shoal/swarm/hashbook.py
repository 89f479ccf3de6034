"""The root's word on a blob, as a download knows it: piece hashes and the verdict.

A piece is trusted only against the root's hash, never the parent's word. Reads go out
before the hash is known (a parent may hold a piece the root hashed a moment ago), so
bytes that arrive first wait here; the root's hashes are a prefix (it hashes pieces in
order as the origin sends them), asked for one long poll at a time. An answer that
brought nothing new is followed by a pause (``hash_pause``) before the next ask.

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
        #: received pieces waiting for their hash: index -> the parents that sent them
        self.held: dict[int, list[PeerId]] = {}
        self.asking = False  #: an ask is out
        self.after = float("-inf")  #: no ask before this time
        self.vouched = False  #: the root checked the whole digest
        self.verdict_out = False
        self.verdict_after = float("-inf")
        self._verdicts = 0

    def __repr__(self) -> str:
        return f"<HashBook {self.first_unknown()}/{len(self.hashes)} known, {len(self.held)} held>"

    def open(self, count: int) -> None:
        self.hashes = [None] * count

    def known(self, index: int) -> bytes | None:
        return self.hashes[index] if 0 <= index < len(self.hashes) else None

    def first_unknown(self) -> int:
        return next((i for i, h in enumerate(self.hashes) if h is None), len(self.hashes))

    def hold(self, index: int, parent: PeerId) -> None:
        self.held.setdefault(index, []).append(parent)

    def may_ask(self, now: float) -> bool:
        return bool(self.held) and not self.asking and now >= self.after

    def ask(self) -> int:
        """An ask goes out: from which piece on."""
        self.asking = True
        return self.first_unknown()

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
        for offset, h in enumerate(view.hashes):
            i = view.hashes_from + offset
            if 0 <= i < len(hashes) and hashes[i] is None:
                hashes[i] = h
                news = True
        ready: list[tuple[PeerId, int, bytes]] = []
        for index in [i for i in self.held if hashes[i] is not None]:
            sha = hashes[index]
            assert sha is not None
            ready += [(p, index, sha) for p in self.held.pop(index)]
        again = bool(self.held) and not self.asking and news
        if self.held and not self.asking and not news:
            self.after = now + self.policy.hash_pause
        return ready, again
