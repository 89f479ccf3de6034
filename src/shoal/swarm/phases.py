"""The phases of a blob download and the moves between them (``download.BlobDownload``).

| phase | doing | on ... | goes to |
|---|---|---|---|
| JOINING | a ``JoinRoot`` is out | joined | SWARMING (or FINISHING if nothing is wanted) |
| | | joined, ``ORIGIN_UNAVAILABLE`` | ORIGIN |
| | | joined, another failure | FAILED |
| | | root silent, busy, tries left | JOINING (same root again) |
| | | root silent | JOINING (next root), ORIGIN when none is left |
| SWARMING | pieces from parents | every wanted piece stored, whole blob | FINISHING |
| | | every wanted piece stored, a range | LINGERING |
| | | root lost (below) | JOINING (next root), ORIGIN when none is left |
| | | ``NOT_JOINED`` from the root, or a freeze | JOINING (same root) |
| FINISHING | a ``RequestVerdict`` is out | complete | DONE (``Finish(verify=False)``) |
| | | not yet | FINISHING (ask again after ``verdict_poll``) |
| | | tries used up, root silent | DONE (``Finish(verify=True)``) |
| LINGERING | a range is here; stays joined | ``want`` more | SWARMING |
| | | ``linger`` passed | DONE (``Finish(whole=False)``) |
| ORIGIN | ``FetchOrigin`` of what is missing | origin done | DONE (``Finish(verify=True)``) |
| any | | ``DIGEST_MISMATCH``, origin failed | FAILED (``Fail``) |

"""

from __future__ import annotations

import enum

from shoal.swarm.messages import FailReason, FetchError


class Phase(enum.Enum):
    JOINING = "joining"
    SWARMING = "swarming"
    FINISHING = "finishing"
    LINGERING = "lingering"
    ORIGIN = "origin"
    DONE = "done"
    FAILED = "failed"

    __hash__ = object.__hash__


_P = Phase
#: the moves each phase may make (the table above); anything else is a bug
PHASES: dict[Phase, frozenset[Phase]] = {
    _P.JOINING: frozenset({_P.JOINING, _P.SWARMING, _P.FINISHING, _P.ORIGIN, _P.FAILED}),
    _P.SWARMING: frozenset({_P.JOINING, _P.FINISHING, _P.LINGERING, _P.ORIGIN, _P.FAILED}),
    _P.FINISHING: frozenset({_P.DONE, _P.JOINING, _P.FAILED}),
    _P.LINGERING: frozenset({_P.SWARMING, _P.DONE, _P.JOINING, _P.ORIGIN, _P.FAILED}),
    _P.ORIGIN: frozenset({_P.DONE, _P.FAILED}),
    _P.DONE: frozenset(),
    _P.FAILED: frozenset(),
}

#: what a fetch error says about the parent (``download`` rule 4)
REASON: dict[FetchError, FailReason] = {
    FetchError.UNREACHABLE: FailReason.UNREACHABLE,
    FetchError.INTERNAL: FailReason.UNREACHABLE,
    FetchError.NOT_FOUND: FailReason.REFUSED,
    FetchError.PIECE_MISSING: FailReason.REFUSED,
    FetchError.BUSY: FailReason.REFUSED,
    FetchError.BAD_REQUEST: FailReason.REFUSED,
}
