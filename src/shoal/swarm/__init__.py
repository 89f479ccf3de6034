"""The swarm core: the scheduler, the piece picker and the download machine.

Pure state machines with time passed in: the same classes run in the root
(``Scheduler``), in the agent (``BlobDownload``, which drives a ``PiecePicker``, and the
agent's ``Outbox``) and in ``shoal sim``. They import no IO and read no clock: the
asyncio shells pass ``loop.time()``, the simulator its own clock. See docs/swarm.md.
"""

from shoal.config import DownloadPolicy, PickerPolicy, SchedulerPolicy
from shoal.swarm.actions import (
    Action,
    DownloadAction,
    Fail,
    FetchOrigin,
    Finish,
    JoinRoot,
    OpenBlob,
    ProbeRoot,
    RequestHashes,
    RequestParents,
    RequestVerdict,
    Store,
)
from shoal.swarm.download import BlobDownload
from shoal.swarm.errors import BlobNotJoinedError, PeerNotJoinedError, PieceIndexError, SwarmError
from shoal.swarm.membership import BlobSwarm
from shoal.swarm.messages import (
    Abandoned,
    AskParents,
    Assignment,
    BlobFailure,
    BlobView,
    Cancel,
    FailReason,
    FetchError,
    Fetching,
    Have,
    Join,
    Leave,
    Load,
    NeedParents,
    ParentFailed,
    ParentOffer,
    PeerDead,
    PeerId,
    PickerAction,
    ProbePeer,
    Request,
    RootMessage,
)
from shoal.swarm.outbox import Outbox
from shoal.swarm.phases import Phase
from shoal.swarm.picker import PiecePicker, PieceState
from shoal.swarm.pieces import (
    from_bitfield,
    full_mask,
    indices_of,
    lowest,
    mask_of,
    piece_count,
    piece_length,
    to_bitfield,
)
from shoal.swarm.placement import owner, rank_roots
from shoal.swarm.scheduler import SCORE, Scheduler

__all__ = [
    "SCORE",
    "Abandoned",
    "Action",
    "AskParents",
    "Assignment",
    "BlobDownload",
    "BlobFailure",
    "BlobNotJoinedError",
    "BlobSwarm",
    "BlobView",
    "Cancel",
    "DownloadAction",
    "DownloadPolicy",
    "Fail",
    "FailReason",
    "FetchError",
    "FetchOrigin",
    "Fetching",
    "Finish",
    "Have",
    "Join",
    "JoinRoot",
    "Leave",
    "Load",
    "NeedParents",
    "OpenBlob",
    "Outbox",
    "ParentFailed",
    "ParentOffer",
    "PeerDead",
    "PeerId",
    "PeerNotJoinedError",
    "Phase",
    "PickerAction",
    "PickerPolicy",
    "PieceIndexError",
    "PiecePicker",
    "PieceState",
    "ProbePeer",
    "ProbeRoot",
    "Request",
    "RequestHashes",
    "RequestParents",
    "RequestVerdict",
    "RootMessage",
    "Scheduler",
    "SchedulerPolicy",
    "Store",
    "SwarmError",
    "from_bitfield",
    "full_mask",
    "indices_of",
    "lowest",
    "mask_of",
    "owner",
    "piece_count",
    "piece_length",
    "rank_roots",
    "to_bitfield",
]
