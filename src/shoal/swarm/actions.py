"""What a blob download (``download.BlobDownload``) asks its shell to do, as values.

Besides these, a download's action list carries the picker's own actions unchanged:
``Request`` (fetch this piece from this parent), ``Cancel``, ``ProbePeer``, and the
messages for the current root (``Have``, ``Fetching``, ``Abandoned``, ``ParentFailed``),
which the shell batches per root (``outbox.Outbox``) and sends to ``download.root``.

Every action that asks a root something has exactly one answer event on the download:

| action | answered by |
|---|---|
| ``JoinRoot`` | ``on_joined(root, view)`` or ``on_root_silent(root, busy)`` |
| ``RequestParents`` | ``on_parents_answer(view)`` or ``on_root_silent`` |
| ``RequestHashes`` | ``on_hashes(view)`` or ``on_root_silent`` |
| ``RequestVerdict`` | ``on_verdict(view)`` or ``on_root_silent`` |
| ``ProbeRoot`` | ``on_probe_root(root, alive, refused)`` |
| ``Request`` | ``on_started``, then ``on_received`` or ``on_fetch_failed`` |
| ``Store`` | ``on_stored(parent, index, ok)`` |
| ``ProbePeer`` | ``on_probe_peer(parent, alive)`` |
| ``FetchOrigin`` | ``on_origin_done(ok)`` |
"""

from __future__ import annotations

from dataclasses import dataclass

from shoal.swarm.messages import Abandoned, BlobFailure, Fetching, Have, PeerId, PickerAction


@dataclass(frozen=True, slots=True)
class JoinRoot:
    """Join the blob's swarm at ``root``; ``have`` is the pieces already here."""

    root: PeerId
    have: int


@dataclass(frozen=True, slots=True)
class RequestParents:
    """Ask the root for (more or other) parents."""

    root: PeerId


@dataclass(frozen=True, slots=True)
class RequestHashes:
    """Ask the root for piece hashes from ``known`` on; it may hold the answer ``wait``
    seconds until it has one."""

    root: PeerId
    known: int
    wait: float


@dataclass(frozen=True, slots=True)
class RequestVerdict:
    """Ask the root whether it has checked the whole digest (``BlobView.complete``)."""

    root: PeerId


@dataclass(frozen=True, slots=True)
class ProbeRoot:
    """A call to the root failed: is it there at all? (its health endpoint)"""

    root: PeerId


@dataclass(frozen=True, slots=True)
class OpenBlob:
    """The blob's geometry is known: make room for it in the store."""

    size: int
    piece_size: int


@dataclass(frozen=True, slots=True)
class Store:
    """The bytes of piece ``index`` from ``parent`` have arrived and its hash is known:
    check them against ``sha256`` and store them (then ``on_stored``)."""

    parent: PeerId
    index: int
    sha256: bytes


@dataclass(frozen=True, slots=True)
class FetchOrigin:
    """No root can serve: fetch these pieces from the origin (``-1``: the whole blob,
    geometry unknown); ``why`` is for the log."""

    pieces: int
    why: str


@dataclass(frozen=True, slots=True)
class Finish:
    """Every wanted piece is here. ``whole``: the blob is complete, seal it (``verify``:
    check the whole digest first, when the root did not vouch for it); not ``whole``: an
    on-demand download ends, the pieces it fetched stay."""

    whole: bool
    verify: bool


@dataclass(frozen=True, slots=True)
class Fail:
    """The blob cannot be had: fail whoever waits for it."""

    failure: BlobFailure
    reason: str


DownloadAction = (
    JoinRoot
    | RequestParents
    | RequestHashes
    | RequestVerdict
    | ProbeRoot
    | OpenBlob
    | Store
    | FetchOrigin
    | Finish
    | Fail
)

#: everything a download's events return: its own actions, the picker's (``Request``,
#: ``Cancel``, ``ProbePeer``...) and the reports for its root
Action = DownloadAction | PickerAction | Have | Fetching | Abandoned
