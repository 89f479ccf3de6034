"""Bodies of the control API, as msgspec structs (JSON on the wire).

Piece sets travel as hex strings of the integer bitmask (bit i = piece i), the same
masks ``shoal.swarm`` uses; piece hashes as hex. Root piece hashes are a prefix (the
root hashes pieces in order as the origin sends them), so a client says how many it
knows and gets the rest.
"""

from __future__ import annotations

import msgspec


class Source(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Where the root fetches the blob if it has to, with the joining client's credentials."""

    host: str
    name: str
    authorization: str = ""


class Offer(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A ``ParentOffer`` on the wire (``codec.offer_wire`` / ``codec.offer``)."""

    peer: str
    zone: str
    have: str
    fetching: str
    only: str = "-1"
    spare: bool = False
    seed: bool = False


class JoinRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    peer: str
    blob: str
    source: Source
    zone: str = ""
    have: str = "0"
    want: int = 0
    known: int = 0


class BlobState(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """What the root knows of a blob; ``hashes`` start at the asker's ``known``.

    Fields at their defaults are left out, so an agent that predates a field never sees
    it: ``chunks`` is sent only to an asker that says ``chunks=1``."""

    blob: str
    size: int
    piece_size: int
    hashes_from: int
    hashes: list[str]
    #: beside each hash, the piece's chunk hashes concatenated, hex ("" = none)
    chunks: list[str] = msgspec.field(default_factory=list)
    #: the root holds every piece and the whole digest checked out
    complete: bool = False
    #: why the blob cannot be had: a ``swarm.BlobFailure`` value ("" = it can)
    failure: str = ""
    #: the failure in words, for logs
    reason: str = ""
    seed: str = ""
    parents: list[Offer] = msgspec.field(default_factory=list)

    @property
    def piece_count(self) -> int:
        return -(-self.size // self.piece_size) if self.piece_size > 0 else 0


class ParentsRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    peer: str
    blob: str
    want: int = 0
    known: int = 0


class Pushed(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A new parent set the root decided without being asked (the agent's tree changed)."""

    blob: str
    parents: list[Offer]


class UpdateResponse(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    assignments: list[Pushed] = msgspec.field(default_factory=list)
    #: blobs the reports named whose swarm does not know the sender (it was dropped as
    #: silent, or the root restarted): the agent joins them again
    forgotten: list[str] = msgspec.field(default_factory=list)


class HoldRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``peer`` holds these whole blobs (said to a root that restarted and forgot)."""

    peer: str
    blobs: list[str]


class Health(msgspec.Struct, frozen=True):
    peer: str
    #: changes every time the root process starts: its soft state is then empty
    incarnation: str
    #: changes whenever the root's preheat jobs change (``shoal.root.preheat``): an agent
    #: that sees a new value asks for its work in a signed call. Only a counter here,
    #: since this answer is unsigned and anyone may read it.
    preheat: int = 0


class Report(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag_field="kind", tag=True):
    pass


class HaveReport(Report, frozen=True, tag="have"):
    blob: str
    indices: list[int]


class FetchingReport(Report, frozen=True, tag="fetching"):
    blob: str
    indices: list[int]


class AbandonedReport(Report, frozen=True, tag="abandoned"):
    blob: str
    indices: list[int]


class FailedReport(Report, frozen=True, tag="parent-failed"):
    blob: str
    parent: str
    reason: str
    index: int = -1


class LeaveReport(Report, frozen=True, tag="leave"):
    blob: str


class LoadReport(Report, frozen=True, tag="load"):
    uploads: int
    upload_bps: float


AnyReport = HaveReport | FetchingReport | AbandonedReport | FailedReport | LeaveReport | LoadReport


class UpdateRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    peer: str
    reports: list[AnyReport]


def mask_hex(mask: int) -> str:
    return format(mask, "x")


def hex_mask(text: str) -> int:
    if len(text) > 1 << 16:
        raise ValueError("piece mask too long")
    return int(text, 16)
