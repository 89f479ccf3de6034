"""What flows into and out of the swarm core, as values (frozen dataclasses, slots).

Two directions, two audiences:

* agent -> root (``Scheduler.handle``): ``Join``, ``Have``, ``Fetching``, ``Abandoned``,
  ``Load``, ``ParentFailed``, ``AskParents``, ``Leave``, ``PeerDead``. The answer to
  ``Join`` and ``AskParents`` is an ``Assignment``; every other message only updates state.
* ``PiecePicker`` -> agent shell: ``Request`` (ask this parent for this piece),
  ``Cancel`` (stop waiting for that request; close or ignore it), ``ParentFailed`` (tell
  the root) and ``NeedParents`` (ask the root for more/other parents).

Piece sets are ``int`` bitmasks, bit *i* = piece *i* (see ``pieces``); convert to the
BitTorrent byte layout with ``pieces.to_bitfield`` when they go on the wire.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

PeerId = str
"""A node's stable name, e.g. ``"10.0.3.7:65002"``; the root uses its own as seed id."""


class FailReason(enum.Enum):
    SLOW = "slow"  # a piece took far longer than this agent's piece times (stall)
    BAD_PIECE = "bad-piece"  # bytes did not match the root's piece hash: ban
    UNREACHABLE = "unreachable"  # connect/read error, closed connection
    REFUSED = "refused"  # the parent answered busy / piece missing


# ---------------------------------------------------------------- agent -> root


@dataclass(frozen=True, slots=True)
class Join:
    """An agent wants ``blob``; ``have`` lists pieces it already holds (a restart)."""

    peer: PeerId
    blob: str
    zone: str = ""
    have: int = 0
    want: int = 0  # parents wanted; 0 = the scheduler's default


@dataclass(frozen=True, slots=True)
class Have:
    """These pieces are verified and stored at ``peer``: it can serve them now."""

    peer: PeerId
    blob: str
    indices: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Fetching:
    """``peer`` has asked for these pieces: it can be handed out for them (cut-through)."""

    peer: PeerId
    blob: str
    indices: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Abandoned:
    """``peer`` no longer fetches these pieces (its request failed and was not re-made)."""

    peer: PeerId
    blob: str
    indices: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Load:
    """Progress report: uploads active at ``peer`` now and its recent upload rate."""

    peer: PeerId
    uploads: int
    upload_bps: float


@dataclass(frozen=True, slots=True)
class ParentFailed:
    """``peer`` gave up on ``parent`` for ``blob``; ``index`` is the piece, -1 if none."""

    peer: PeerId
    blob: str
    parent: PeerId
    reason: FailReason
    index: int = -1


@dataclass(frozen=True, slots=True)
class AskParents:
    """Refresh: ``peer`` has idle request slots its parents cannot fill."""

    peer: PeerId
    blob: str
    want: int = 0


@dataclass(frozen=True, slots=True)
class Leave:
    """``peer`` stops serving ``blob`` (evicted it, or shutting down cleanly)."""

    peer: PeerId
    blob: str


@dataclass(frozen=True, slots=True)
class PeerDead:
    """``peer`` is gone for every blob (missed heartbeats, connection reset)."""

    peer: PeerId


RootMessage = (
    Join | Have | Fetching | Abandoned | Load | ParentFailed | AskParents | Leave | PeerDead
)


# ---------------------------------------------------------------- root -> agent


@dataclass(frozen=True, slots=True)
class ParentOffer:
    """One parent and what it holds (``have``) or is fetching (``fetching``) right now.

    ``only`` limits what the agent may ask of this parent (a stripe parent sends one
    stripe of the pieces); ``-1`` is every piece. Apply it to later news from the parent.
    A ``spare`` parent is asked only for pieces no other parent holds or is fetching;
    the ``seed`` (the root) is never dropped for being slower than the others: it goes
    at the origin's pace and is the only source of what it has not yet handed out.
    """

    peer: PeerId
    zone: str
    have: int
    fetching: int
    only: int = -1
    spare: bool = False
    seed: bool = False


@dataclass(frozen=True, slots=True)
class Assignment:
    """The parents ``peer`` should fetch ``blob`` from, best first."""

    peer: PeerId
    blob: str
    parents: tuple[ParentOffer, ...]


# ---------------------------------------------------------------- picker -> agent shell


@dataclass(frozen=True, slots=True)
class Request:
    """Ask ``parent`` for piece ``index`` (it may still be fetching it: it answers later)."""

    parent: PeerId
    index: int


@dataclass(frozen=True, slots=True)
class Cancel:
    """Stop waiting for ``index`` from ``parent``; a late answer is to be ignored."""

    parent: PeerId
    index: int


@dataclass(frozen=True, slots=True)
class NeedParents:
    """Request slots are idle and no parent can fill them: send ``AskParents``."""

    blob: str


PickerAction = Request | Cancel | ParentFailed | NeedParents
