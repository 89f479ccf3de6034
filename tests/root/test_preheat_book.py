"""The root's preheat book alone: targets, hand-out, settling, cancel and expiry, with
time passed in (the book does no IO)."""

from __future__ import annotations

import pytest

from shoal.config import PreheatConfig
from shoal.control.preheat import BlobRef, JobSpec, PollRequest, Progress
from shoal.errors import TooManyRequestsError
from shoal.root.preheat import AGENT_MEMORY, RETAIN, Job, JobInvalidError, PreheatBook

BLOBS = [BlobRef("sha256:" + "a" * 64, 100), BlobRef("sha256:" + "b" * 64, 50)]


def job(book: PreheatBook, spec: JobSpec, now: float = 0.0, ttl: float = 100.0) -> Job:
    wanted, targets, names = book.plan(spec, now)
    return book.add(
        Job(book.new_id(), spec.image, "reg", "app", "Basic x", "sha256:m", BLOBS, now,
            now + ttl, spec.rate, spec.key, "", targets, wanted, names)
    )  # fmt: skip


def phase(j: Job) -> str:
    """The job's state read afresh (a plain attribute read would be narrowed by mypy)."""
    return j.state


def poll(book: PreheatBook, peer: str, now: float, **kw: object) -> list[str]:
    answer = book.poll(PollRequest(peer, f"n-{peer}", **kw), now)  # type: ignore[arg-type]
    return [w.job for w in answer.work]


def done(book: PreheatBook, peer: str, job_id: str, now: float, state: str = "done") -> None:
    book.poll(PollRequest(peer, "", [Progress(job_id, state, 2, 150)], [job_id]), now)  # type: ignore[arg-type]


def test_count_takes_the_first_agents_and_settles_when_they_are_done() -> None:
    book = PreheatBook(PreheatConfig())
    j = job(book, JobSpec("img", count=2))
    assert poll(book, "10.0.0.1:65002", 1) == [j.id]
    assert poll(book, "10.0.0.2:65002", 1) == [j.id]
    assert poll(book, "10.0.0.3:65002", 1) == []  # the count is full
    assert poll(book, "10.0.0.1:65002", 2, held=[j.id]) == []  # handed out once
    assert poll(book, "10.0.0.1:65002", 2) == [j.id]  # again after a restart
    done(book, "10.0.0.1:65002", j.id, 3)
    assert phase(j) == "running"
    done(book, "10.0.0.2:65002", j.id, 4)
    assert phase(j) == "done" and j.wire().count("done") == 2
    assert [e for e, _ in book.take_events()] == ["created", "done"]


def test_named_nodes_match_by_name_or_address_and_a_failure_fails_the_job() -> None:
    book = PreheatBook(PreheatConfig())
    j = job(book, JobSpec("img", nodes=["n-10.0.0.1:65002", "10.0.0.2"]))
    assert poll(book, "10.0.0.1:65002", 1) == [j.id]  # by node name
    assert poll(book, "10.0.0.2:65002", 1) == [j.id]  # by address
    assert poll(book, "10.0.0.3:65002", 1) == []
    assert poll(book, "[fd00::2]:65002", 1) == []
    done(book, "10.0.0.1:65002", j.id, 2)
    done(book, "10.0.0.2:65002", j.id, 3, state="failed")
    assert j.state == "failed" and "10.0.0.2:65002" in j.reason


def test_percent_of_the_agents_present_and_all_includes_latecomers() -> None:
    book = PreheatBook(PreheatConfig())
    with pytest.raises(JobInvalidError, match="no agent has polled"):
        book.plan(JobSpec("img", percent=50), 0)
    for i in range(4):
        poll(book, f"10.0.0.{i}:65002", 0)
    half = job(book, JobSpec("img", percent=50))
    assert half.wanted == 2 and half.targets == "2 of 4 agents (50%)"
    everyone = job(book, JobSpec("img2"))
    for i in range(4):
        assert everyone.id in poll(book, f"10.0.0.{i}:65002", 1)
        done(book, f"10.0.0.{i}:65002", everyone.id, 2)
    assert phase(everyone) == "done"
    assert poll(book, "10.0.0.9:65002", 3) == [everyone.id]  # a node added later
    assert phase(everyone) == "running"
    done(book, "10.0.0.9:65002", everyone.id, 4)
    assert phase(everyone) == "done"
    assert [e for e, j in book.take_events() if j is everyone] == ["created", "done"]


def test_cancel_tells_holders_and_expiry_and_forgetting_follow_the_ttl() -> None:
    book = PreheatBook(PreheatConfig())
    gen = book.generation
    j = job(book, JobSpec("img"), ttl=10)
    assert book.generation == gen + 1
    assert poll(book, "10.0.0.1:65002", 1) == [j.id]
    book.cancel(j.id, 2)
    assert book.generation == gen + 2
    answer = book.poll(PollRequest("10.0.0.1:65002", "", [], [j.id]), 3)
    assert answer.cancelled == [j.id] and answer.work == []
    k = job(book, JobSpec("img", key="k"), ttl=10)
    assert book.find("k", "img") is k and book.find("k", "other") is None
    book.sweep(10)
    assert k.state == "expired" and book.find("k", "img") is None
    book.sweep(10 + RETAIN)
    assert j.id not in book.jobs and k.id not in book.jobs
    assert book.agents == {}  # silent for longer than AGENT_MEMORY
    assert RETAIN > AGENT_MEMORY


def test_bad_specs_and_the_job_cap() -> None:
    book = PreheatBook(PreheatConfig(max_jobs=1))
    with pytest.raises(JobInvalidError, match="one of them"):
        book.plan(JobSpec("img", count=2, nodes=["a"]), 0)
    with pytest.raises(JobInvalidError):
        book.plan(JobSpec("img", percent=101), 0)
    job(book, JobSpec("img"))
    with pytest.raises(TooManyRequestsError, match="maxJobs"):
        job(book, JobSpec("img2"))
