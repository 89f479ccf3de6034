"""Which root a download talks to, and whether that root is still there.

Part of the download machine (``download.BlobDownload``), kept apart because it is one
concept with its own small state: the roots in rendezvous order, the ones given up on,
the tries of a join, and the doubt about the current root.

1. The first root in rendezvous order owns the blob; a join that times out is sent
   again (``join_tries``), one refused or failed moves on to the next root at once.
2. A failed call makes the current root doubted: probed every ``probe_interval``. It is
   lost after ``refused_probes`` refusals in a row (nothing listens: it died) or after
   ``root_timeout`` seconds of doubt (it may only be loaded: a busy root answers late
   now and then, and treating one late answer as a dead root sends every agent to the
   origin). An answer clears the doubt, and so does a piece the root sent
   (``BlobDownload.on_stored``): a root whose control port is slow behind its own full
   uplink is running.
3. A piece from a parent, checked against the root's hash, does not clear the doubt
   (the parents run whether the root does or not) but postpones the loss: the root is
   lost after ``root_timeout`` seconds with neither an answer nor a stored piece. A
   download that still gets its pieces has no use for the origin; on a saturated host
   every call may time out for a while (measured: 32 agents and their clients on 2
   cores, control calls answered in 2.2 s on average; with a profiler attached too,
   losing the only root sent 1.9 copies of the image to the origin). When the parents
   run dry (the pieces nobody has, hashes not yet known) the loss comes
   ``root_timeout`` later.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

from shoal.config import DownloadPolicy
from shoal.swarm.messages import PeerId


class Due(enum.Enum):
    PROBE = "probe"  # send a probe now
    LOST = "lost"  # the root is gone


class RootLink:
    def __init__(
        self, roots: Sequence[PeerId], policy: DownloadPolicy, root_timeout: float
    ) -> None:
        self.roots = list(roots)
        self.policy = policy
        self.root_timeout = root_timeout
        self.root: PeerId = ""  #: the root reports and asks go to ("" between roots)
        self.lost: set[PeerId] = set()
        self._candidate = 0  # index in ``roots`` of the root being (or last) joined
        self._tries = 0
        self._doubt_since: float | None = None
        self._sign = float("-inf")  # the last stored piece while doubted (rule 3)
        self._probe_out = False
        self._probe_after = float("-inf")
        self._refused = 0

    def __repr__(self) -> str:
        doubt = "" if self._doubt_since is None else f" doubted since {self._doubt_since:.1f}"
        return f"<RootLink {self.root or self.joining or '-'}{doubt} lost={sorted(self.lost)}>"

    @property
    def joining(self) -> PeerId:
        """The root the current join goes to."""
        i = self._candidate
        return self.roots[i] if 0 <= i < len(self.roots) else ""

    @property
    def doubting(self) -> bool:
        return self._doubt_since is not None

    # joins (rule 1) ----------------------------------------------------------------

    def next(self, *, first: bool = False) -> PeerId | None:
        """The next root in rendezvous order not given up on; ``None``: none is left."""
        for i in range(0 if first else self._candidate + 1, len(self.roots)):
            if self.roots[i] not in self.lost:
                self._candidate, self._tries = i, 0
                return self.roots[i]
        self._candidate = len(self.roots)
        return None

    def again(self) -> PeerId:
        """Join the current root once more (it forgot this agent, or time jumped)."""
        if self.root in self.roots:
            self._candidate = self.roots.index(self.root)
        self._tries = 0
        return self.joining

    def join_failed(self, busy: bool) -> bool:
        """The join timed out (``busy``) or failed: True to send it again, False when
        this root is given up on (then ask ``next``)."""
        self._tries += 1
        if busy and self._tries < self.policy.join_tries:
            return True
        self.lost.add(self.joining)
        return False

    def joined(self, root: PeerId) -> None:
        self.root = root
        self.clear()

    # doubt (rule 2) ------------------------------------------------------------------

    def doubt(self, now: float) -> bool:
        """A call failed; True when the doubt is new (probe at once)."""
        if self._doubt_since is not None:
            return False
        self._doubt_since = now
        self._refused = 0
        self._probe_out = True
        return True

    def answered(self, alive: bool, refused: bool, now: float) -> bool:
        """A probe's answer; True when the root is now lost."""
        if self._doubt_since is None:
            return False
        self._probe_out = False
        if alive:
            self.clear()
            return False
        self._refused = self._refused + 1 if refused else 0
        if self._refused >= self.policy.refused_probes:
            return True
        self._probe_after = now + self.policy.probe_interval
        return False

    def progressed(self, now: float) -> None:
        """A piece was stored (rule 3): the loss waits ``root_timeout`` from now."""
        if self._doubt_since is not None:
            self._sign = now

    def _lost_at(self) -> float:
        assert self._doubt_since is not None
        return max(self._doubt_since, self._sign) + self.root_timeout

    def due(self, now: float) -> Due | None:
        if self._doubt_since is None:
            return None
        if now >= self._lost_at():
            return Due.LOST
        if not self._probe_out and now >= self._probe_after:
            self._probe_out = True
            return Due.PROBE
        return None

    def deadlines(self) -> list[float]:
        if self._doubt_since is None:
            return []
        times = [self._lost_at()]
        if not self._probe_out:
            times.append(self._probe_after)
        return times

    def lose(self) -> None:
        """The current root is gone for this download."""
        self.lost.add(self.root)
        self.root = ""
        self.clear()

    def clear(self) -> None:
        self._doubt_since = None
        self._sign = float("-inf")
        self._probe_out = False
        self._refused = 0

    def shift(self, gap: float) -> None:
        if self._doubt_since is not None:
            self._doubt_since += gap
            self._sign += gap
