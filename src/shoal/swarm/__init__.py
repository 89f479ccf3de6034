"""The scheduler and piece picker: pure state machines, time passed in.

The same classes run in the root (``Scheduler``), in the agent (``PiecePicker``, one per
blob download) and in ``shoal sim``. They import no IO and read no clock: the asyncio
shell passes ``loop.time()``, the simulator its own clock. See docs/swarm.md.
"""

from shoal.swarm.errors import BlobNotJoinedError, PeerNotJoinedError, PieceIndexError, SwarmError
from shoal.swarm.membership import BlobSwarm
from shoal.swarm.messages import (
    Abandoned,
    AskParents,
    Assignment,
    Cancel,
    FailReason,
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
    Request,
    RootMessage,
)
from shoal.swarm.picker import PickerPolicy, PiecePicker, PieceState
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
from shoal.swarm.scheduler import SCORE, Scheduler, SchedulerPolicy

__all__ = [
    "SCORE",
    "Abandoned",
    "AskParents",
    "Assignment",
    "BlobNotJoinedError",
    "BlobSwarm",
    "Cancel",
    "FailReason",
    "Fetching",
    "Have",
    "Join",
    "Leave",
    "Load",
    "NeedParents",
    "ParentFailed",
    "ParentOffer",
    "PeerDead",
    "PeerId",
    "PeerNotJoinedError",
    "PickerAction",
    "PickerPolicy",
    "PieceIndexError",
    "PiecePicker",
    "PieceState",
    "Request",
    "RootMessage",
    "Scheduler",
    "SchedulerPolicy",
    "SwarmError",
    "from_bitfield",
    "full_mask",
    "indices_of",
    "lowest",
    "mask_of",
    "piece_count",
    "piece_length",
    "to_bitfield",
]
