"""An agent's reports to its roots, batched: one call per root carries every blob's news.

Every download reports piece by piece (``Have``, ``Fetching``, ``Abandoned``,
``ParentFailed``); a call per report, or per download, would be one per piece or per
layer (4-40x the calls at a root every agent is calling). The outbox holds them per
root and says when a batch is due: at most ``report_interval`` after the last one, so
no report waits longer than that; a root that schedules a download here and has heard
nothing for ``push_poll`` is called anyway, because the answer carries the parent sets
it pushed. Consecutive reports of one kind for one blob travel as one.

Pure: time is passed in; the agent's report task and the simulator both use it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from shoal.config import DownloadPolicy
from shoal.swarm.messages import Abandoned, Fetching, Have, PeerId, RootMessage

_MERGED = (Have, Fetching, Abandoned)


class Outbox:
    def __init__(self, policy: DownloadPolicy | None = None) -> None:
        self.policy = policy or DownloadPolicy()
        self._queued: dict[PeerId, list[RootMessage]] = {}
        self._sent: dict[PeerId, float] = {}

    def __repr__(self) -> str:
        waiting = sum(len(q) for q in self._queued.values())
        return f"<Outbox [{waiting} reports for {len(self._queued)} roots]>"

    def add(self, root: PeerId, msg: RootMessage) -> None:
        if not root:
            return  # between roots: the next root learns the state from the join
        queue = self._queued.setdefault(root, [])
        if queue and isinstance(msg, _MERGED):
            last = queue[-1]
            if isinstance(last, type(msg)) and last.blob == msg.blob:
                queue[-1] = dataclasses.replace(last, indices=last.indices + msg.indices)
                return
        queue.append(msg)

    def due(self, now: float, live: Iterable[PeerId]) -> list[tuple[PeerId, list[RootMessage]]]:
        """Batches to send now (a batch may be empty: a poll for pushed parent sets)."""
        pol = self.policy
        out: list[tuple[PeerId, list[RootMessage]]] = []
        roots = set(self._queued) | set(live)
        for root in sorted(roots):
            last = self._sent.get(root, float("-inf"))
            queued = self._queued.get(root)
            # the same sums as ``next_deadline``: a batch due at its deadline is due
            if (queued and now >= last + pol.report_interval) or now >= last + pol.push_poll:
                self._sent[root] = now
                out.append((root, self._queued.pop(root, [])))
        return out

    def report_due(self, root: PeerId) -> float:
        """When a report queued for ``root`` now is due at the latest."""
        return self._sent.get(root, float("-inf")) + self.policy.report_interval

    def next_deadline(self, live: Iterable[PeerId]) -> float | None:
        pol = self.policy
        times = [self._sent.get(r, float("-inf")) + pol.report_interval for r in self._queued] + [
            self._sent.get(r, float("-inf")) + pol.push_poll for r in live
        ]
        return min(times) if times else None

    def take(self, root: PeerId) -> list[RootMessage]:
        """What waits for ``root``, now, whatever the batch interval says."""
        return self._queued.pop(root, [])

    def drop(self, root: PeerId) -> None:
        """The root is gone: what was waiting for it is moot."""
        self._queued.pop(root, None)
