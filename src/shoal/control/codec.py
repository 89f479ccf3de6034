"""The one translation between the swarm's values and the control API's bodies.

``shoal.swarm`` speaks frozen dataclasses (``Join``, ``Have``, ``ParentOffer``,
``BlobView``...); the control API speaks msgspec structs (``schema``). Every crossing
goes through a function here, in both directions, so that what the root's scheduler
decided is exactly what the agent's download machine receives (a round-trip property
test sets every field of every message to non-default values). Failures cross as codes
(``BlobFailure``, ``FailReason``), never as text to be matched.
"""

from __future__ import annotations

from shoal.control.schema import (
    AbandonedReport,
    AnyReport,
    BlobState,
    FailedReport,
    FetchingReport,
    HaveReport,
    JoinRequest,
    LeaveReport,
    LoadReport,
    Offer,
    Pushed,
    Source,
    hex_mask,
    mask_hex,
)
from shoal.swarm.messages import (
    Abandoned,
    Assignment,
    BlobFailure,
    BlobView,
    FailReason,
    Fetching,
    Have,
    Join,
    Leave,
    Load,
    ParentFailed,
    ParentOffer,
    PeerId,
    RootMessage,
)


class CodecError(ValueError):
    """A body that does not translate into a swarm message (an unknown code, say)."""


# ---------------------------------------------------------------- parent offers


def offer_wire(offer: ParentOffer) -> Offer:
    return Offer(
        offer.peer,
        offer.zone,
        mask_hex(offer.have),
        mask_hex(offer.fetching),
        "-1" if offer.only == -1 else mask_hex(offer.only),
        offer.spare,
        offer.seed,
    )


def offer(wire: Offer) -> ParentOffer:
    only = -1 if wire.only == "-1" else hex_mask(wire.only)
    return ParentOffer(
        wire.peer,
        wire.zone,
        hex_mask(wire.have),
        hex_mask(wire.fetching),
        only,
        spare=wire.spare,
        seed=wire.seed,
    )


def pushed_wire(assignment: Assignment) -> Pushed:
    return Pushed(assignment.blob, [offer_wire(o) for o in assignment.parents])


def pushed(wire: Pushed) -> tuple[str, tuple[ParentOffer, ...]]:
    return wire.blob, tuple(offer(o) for o in wire.parents)


# ---------------------------------------------------------------- joins


def join_wire(msg: Join, source: Source, known: int = 0) -> JoinRequest:
    return JoinRequest(
        peer=msg.peer,
        blob=msg.blob,
        source=source,
        zone=msg.zone,
        have=mask_hex(msg.have),
        want=msg.want,
        known=known,
    )


def join(wire: JoinRequest) -> Join:
    return Join(wire.peer, wire.blob, wire.zone, hex_mask(wire.have), wire.want)


# ---------------------------------------------------------------- reports


def report_wire(msg: RootMessage) -> AnyReport:
    """An agent's message to its root as it travels in an update batch."""
    match msg:
        case Have(blob=blob, indices=indices):
            return HaveReport(blob, list(indices))
        case Fetching(blob=blob, indices=indices):
            return FetchingReport(blob, list(indices))
        case Abandoned(blob=blob, indices=indices):
            return AbandonedReport(blob, list(indices))
        case ParentFailed(blob=blob, parent=parent, reason=reason, index=index):
            return FailedReport(blob, parent, reason.value, index)
        case Leave(blob=blob):
            return LeaveReport(blob)
        case Load(uploads=uploads, upload_bps=bps):
            return LoadReport(uploads, bps)
    raise CodecError(f"{type(msg).__name__} does not travel in an update")


def report(peer: PeerId, wire: AnyReport) -> RootMessage:
    """The root's side: a report from ``peer`` as the scheduler's message."""
    match wire:
        case HaveReport(blob=blob, indices=indices):
            return Have(peer, blob, tuple(indices))
        case FetchingReport(blob=blob, indices=indices):
            return Fetching(peer, blob, tuple(indices))
        case AbandonedReport(blob=blob, indices=indices):
            return Abandoned(peer, blob, tuple(indices))
        case FailedReport(blob=blob, parent=parent, reason=reason, index=index):
            try:
                why = FailReason(reason)
            except ValueError as exc:
                raise CodecError(f"unknown failure reason {reason!r}") from exc
            return ParentFailed(peer, blob, parent, why, index)
        case LeaveReport(blob=blob):
            return Leave(peer, blob)
        case LoadReport(uploads=uploads, upload_bps=bps):
            return Load(peer, uploads, bps)
    raise CodecError(f"unknown report {wire!r}")


# ---------------------------------------------------------------- blob views


def view_wire(view: BlobView) -> BlobState:
    return BlobState(
        blob=view.blob,
        size=view.size,
        piece_size=view.piece_size,
        hashes_from=view.hashes_from,
        hashes=[h.hex() for h in view.hashes],
        chunks=[c.hex() for c in view.chunks],
        complete=view.complete,
        failure="" if view.failure is None else view.failure.value,
        reason=view.reason,
        seed=view.seed,
        parents=[offer_wire(o) for o in view.parents],
    )


def view(wire: BlobState) -> BlobView:
    try:
        failure = BlobFailure(wire.failure) if wire.failure else None
        hashes = tuple(bytes.fromhex(h) for h in wire.hashes)
        chunks = tuple(bytes.fromhex(c) for c in wire.chunks)
    except ValueError as exc:
        raise CodecError(f"blob state of {wire.blob}: {exc}") from exc
    return BlobView(
        blob=wire.blob,
        size=wire.size,
        piece_size=wire.piece_size,
        hashes_from=wire.hashes_from,
        hashes=hashes,
        chunks=chunks,
        complete=wire.complete,
        failure=failure,
        reason=wire.reason,
        seed=wire.seed,
        parents=tuple(offer(o) for o in wire.parents),
    )
