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
    """Why an agent gave up on a parent, as it tells the root (``ParentFailed``)."""

    SLOW = "slow"  # a piece took far longer than this agent's piece times (stall)
    BAD_PIECE = "bad-piece"  # bytes did not match the root's piece hash: ban
    UNREACHABLE = "unreachable"  # connect/read error, closed connection, no pong
    REFUSED = "refused"  # the parent answered busy / piece missing


class FetchError(enum.Enum):
    """How one piece fetch from a parent ended without the piece: the peer protocol's
    error codes as the download machine sees them (the shell maps the wire's codes)."""

    UNREACHABLE = "unreachable"  # no connection, connection lost, no answer
    NOT_FOUND = "not-found"  # the parent does not have the blob
    PIECE_MISSING = "piece-missing"  # it has the blob, not (yet) the piece
    BUSY = "busy"  # too much in flight there: ask elsewhere
    BAD_REQUEST = "bad-request"  # the range is not in the blob as the parent has it
    INTERNAL = "internal"  # the parent failed locally (an I/O error)


class BlobFailure(enum.Enum):
    """Why a root cannot serve a blob (``BlobView.failure``), so that an agent acts on
    a code and never on message text."""

    ORIGIN_UNAVAILABLE = "origin-unavailable"  # the root could not fetch it: try yourself
    DIGEST_MISMATCH = "digest-mismatch"  # the origin's bytes are not the digest: nobody
    UNKNOWN_BLOB = "unknown-blob"  # the root has no swarm for it (not joined there)
    NOT_JOINED = "not-joined"  # the asker is not (any more) a member: join again
    SOURCE_REFUSED = "source-refused"  # the root's upstream policy refuses the origin


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


@dataclass(frozen=True, slots=True)
class ProbePeer:
    """``parent`` holds requests and has sent nothing for a while: is it alive? (a ping
    on its connection; the answer goes to ``on_probe``)."""

    parent: PeerId


PickerAction = Request | Cancel | ParentFailed | NeedParents | ProbePeer


# ---------------------------------------------------------------- root -> agent (views)


@dataclass(frozen=True, slots=True)
class BlobView:
    """What a root says of a blob in answer to a join, an ask for parents or hashes.

    ``hashes`` are the root's piece hashes from piece ``hashes_from`` on (the root hashes
    pieces in order as the origin sends them, so they are a prefix); ``chunks``, in an
    answer to a hash ask, each of those pieces' chunk hashes (``b""``: none); ``complete``:
    the root holds every piece and the whole digest checked out.
    """

    blob: str
    size: int = 0
    piece_size: int = 0
    hashes_from: int = 0
    hashes: tuple[bytes, ...] = ()
    chunks: tuple[bytes, ...] = ()
    complete: bool = False
    failure: BlobFailure | None = None
    reason: str = ""  #: the failure in words, for logs
    seed: PeerId = ""
    parents: tuple[ParentOffer, ...] = ()
