"""Every swarm <-> control message survives the trip through JSON with every field set.

What the root's scheduler decides must be what the agent's download machine receives:
a field the codec drops (a parent offer's ``seed`` and ``spare`` flags once were) makes
production run another swarm than the simulator. Each strategy sets every field to a
value other than its default.
"""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shoal.control import codec
from shoal.control.preheat import (
    BlobRef,
    Credentials,
    JobList,
    JobSpec,
    JobState,
    NodeProgress,
    PollAnswer,
    PollRequest,
    Progress,
    Work,
)
from shoal.control.schema import (
    AnyReport,
    BlobState,
    Health,
    JoinRequest,
    Pushed,
    Source,
    UpdateRequest,
)
from shoal.swarm import (
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
    RootMessage,
)

names = st.text(min_size=1, max_size=24)
masks = st.integers(min_value=1, max_value=(1 << 700) - 1)
indices = st.lists(st.integers(min_value=0, max_value=10_000), min_size=1, max_size=20).map(tuple)
digests = st.binary(min_size=32, max_size=32).map(lambda b: "sha256:" + b.hex())

offers = st.builds(
    ParentOffer,
    peer=names,
    zone=names,
    have=masks,
    fetching=masks,
    only=masks,
    spare=st.just(True),
    seed=st.just(True),
)
reports: st.SearchStrategy[RootMessage] = st.one_of(
    st.builds(Have, peer=names, blob=digests, indices=indices),
    st.builds(Fetching, peer=names, blob=digests, indices=indices),
    st.builds(Abandoned, peer=names, blob=digests, indices=indices),
    st.builds(
        ParentFailed,
        peer=names,
        blob=digests,
        parent=names,
        reason=st.sampled_from(FailReason),
        index=st.integers(min_value=0, max_value=10_000),
    ),
    st.builds(Leave, peer=names, blob=digests),
    st.builds(
        Load,
        peer=names,
        uploads=st.integers(min_value=1, max_value=1000),
        upload_bps=st.floats(min_value=1.0, max_value=1e12),
    ),
)
views = st.builds(
    BlobView,
    blob=digests,
    size=st.integers(min_value=1, max_value=1 << 40),
    piece_size=st.integers(min_value=1, max_value=1 << 26),
    hashes_from=st.integers(min_value=1, max_value=10_000),
    hashes=st.lists(st.binary(min_size=32, max_size=32), min_size=1, max_size=8).map(tuple),
    complete=st.just(True),
    failure=st.sampled_from(BlobFailure),
    reason=names,
    seed=names,
    parents=st.lists(offers, min_size=1, max_size=4).map(tuple),
)


def _wire(obj: object, kind: type[msgspec.Struct]) -> object:
    return msgspec.json.decode(msgspec.json.encode(obj), type=kind)


@given(reports)
def test_every_report_round_trips(msg: RootMessage) -> None:
    req = UpdateRequest(msg.peer, [codec.report_wire(msg)])
    back = _wire(req, UpdateRequest)
    assert isinstance(back, UpdateRequest)
    assert [codec.report(back.peer, r) for r in back.reports] == [msg]


@given(views)
def test_every_blob_view_round_trips(view: BlobView) -> None:
    back = _wire(codec.view_wire(view), BlobState)
    assert isinstance(back, BlobState)
    assert codec.view(back) == view


@given(
    st.builds(
        Join,
        peer=names,
        blob=digests,
        zone=names,
        have=masks,
        want=st.integers(min_value=1, max_value=16),
    ),
    st.builds(Source, host=names, name=names, authorization=names),
)
def test_every_join_round_trips(join: Join, source: Source) -> None:
    back = _wire(codec.join_wire(join, source), JoinRequest)
    assert isinstance(back, JoinRequest)
    assert codec.join(back) == join
    assert back.source == source


@given(st.builds(Assignment, peer=names, blob=digests, parents=st.lists(offers).map(tuple)))
def test_every_pushed_assignment_round_trips(assignment: Assignment) -> None:
    back = _wire(codec.pushed_wire(assignment), Pushed)
    assert isinstance(back, Pushed)
    assert codec.pushed(back) == (assignment.blob, assignment.parents)


def test_an_unknown_failure_reason_is_a_codec_error_not_a_guess() -> None:
    bad: AnyReport = msgspec.json.decode(
        b'{"kind":"parent-failed","blob":"b","parent":"p","reason":"tired"}', type=AnyReport
    )
    with pytest.raises(codec.CodecError, match="tired"):
        codec.report("me", bad)


# --- the preheat API's bodies (``shoal.control.preheat``) and the health answer -----------

creds = st.builds(Credentials, username=names, password=names, authorization=names)
blob_refs = st.builds(BlobRef, digest=digests, size=st.integers(min_value=1, max_value=1 << 40))
unix = st.floats(min_value=1.0, max_value=4e9)
node_phases = st.sampled_from(["running", "done", "failed"])
node_progress = st.builds(
    NodeProgress,
    peer=names,
    node=names,
    state=node_phases,
    blobs_done=st.integers(min_value=1, max_value=1000),
    bytes_done=st.integers(min_value=1, max_value=1 << 40),
    reason=names,
    started=unix,
    finished=unix,
)
job_states = st.builds(
    JobState,
    id=names,
    image=names,
    state=st.sampled_from(["resolving", "done", "failed", "cancelled", "expired"]),
    reason=names,
    key=names,
    origin=names,
    created=unix,
    expires=unix,
    manifest=digests,
    blobs=st.lists(blob_refs, min_size=1, max_size=4),
    targets=names,
    wanted=st.integers(min_value=0, max_value=5000),
    rate=st.floats(min_value=0.1, max_value=1e4),
    nodes=st.lists(node_progress, min_size=1, max_size=4),
)


@given(
    st.builds(
        JobSpec,
        image=names,
        credentials=creds,
        nodes=st.lists(names, min_size=1, max_size=4),
        count=st.integers(min_value=1, max_value=5000),
        percent=st.floats(min_value=0.1, max_value=100),
        ttl=st.floats(min_value=1, max_value=1e6),
        rate=st.floats(min_value=0.1, max_value=1e4),
        platform=names,
        key=names,
        origin=names,
    ),
    job_states,
)
def test_every_preheat_job_body_round_trips(spec: JobSpec, state: JobState) -> None:
    assert _wire(spec, JobSpec) == spec
    assert _wire(state, JobState) == state
    assert _wire(JobList([state, state]), JobList) == JobList([state, state])


@given(
    st.builds(
        PollRequest,
        peer=names,
        node=names,
        progress=st.lists(
            st.builds(
                Progress,
                job=names,
                state=node_phases,
                blobs_done=st.integers(min_value=1, max_value=1000),
                bytes_done=st.integers(min_value=1, max_value=1 << 40),
                reason=names,
            ),
            min_size=1,
            max_size=4,
        ),
        held=st.lists(names, min_size=1, max_size=4),
        wait=st.floats(min_value=0.1, max_value=25),
    ),
    st.builds(
        PollAnswer,
        work=st.lists(
            st.builds(
                Work,
                job=names,
                host=names,
                name=names,
                authorization=names,
                blobs=st.lists(blob_refs, min_size=1, max_size=4),
                ttl=st.floats(min_value=1, max_value=1e6),
                rate=st.floats(min_value=0.1, max_value=1e4),
            ),
            min_size=1,
            max_size=3,
        ),
        cancelled=st.lists(names, min_size=1, max_size=3),
        generation=st.integers(min_value=1, max_value=1 << 40),
    ),
    st.builds(
        Health, peer=names, incarnation=names, preheat=st.integers(min_value=1, max_value=1 << 40)
    ),
)
def test_every_preheat_poll_and_health_round_trips(
    req: PollRequest, answer: PollAnswer, health: Health
) -> None:
    assert _wire(req, PollRequest) == req
    assert _wire(answer, PollAnswer) == answer
    assert _wire(health, Health) == health
