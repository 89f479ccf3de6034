"""The rules of ``shoal.root.vetting`` one by one, with a probe and a clock the test
holds (the real handshake probe is exercised by test_sybil and test_control_api)."""

from __future__ import annotations

import asyncio

import pytest

from shoal.config import ControlConfig
from shoal.errors import TooManyRequestsError
from shoal.root.vetting import (
    PROBE_TRIES,
    REFUSED_FOR,
    SOURCE_WINDOW,
    TIMED_OUT_FOR,
    VETTED_FOR,
    PeerUnvettedError,
    PeerVettingError,
    Vetting,
)

SECRET = b"0123456789abcdef"


class Probes:
    def __init__(self, alive: set[str], delay: float = 0.0) -> None:
        self.alive = alive
        self.delay = delay
        self.asked: list[str] = []

    async def __call__(self, peer: str) -> None:
        self.asked.append(peer)
        await asyncio.sleep(self.delay)
        if peer not in self.alive:
            raise ConnectionRefusedError(f"{peer}: connection refused")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def vetting(
    probes: Probes, clock: Clock, *, peers_per_source: int = 3, vet_timeout: float = 0.5
) -> Vetting:
    cfg = ControlConfig(peers_per_source=peers_per_source, vet_timeout=vet_timeout)
    return Vetting(SECRET, cfg, node=lambda: "10.0.0.1:65002", probe=probes, clock=clock)


async def test_a_live_peer_is_probed_once_and_remembered() -> None:
    probes, clock = Probes({"10.0.0.2:65002"}), Clock()
    v = vetting(probes, clock)
    await asyncio.gather(*(v.admit("10.0.0.2:65002", "10.0.0.2") for _ in range(10)))
    await v.admit("10.0.0.2:65002", "10.0.0.2")
    assert probes.asked == ["10.0.0.2:65002"]
    clock.now += VETTED_FOR + 1
    await v.admit("10.0.0.2:65002", "10.0.0.2")
    assert len(probes.asked) == 2


async def test_a_dead_peer_is_refused_and_not_asked_again_for_a_while() -> None:
    probes, clock = Probes(set()), Clock()
    v = vetting(probes, clock)
    for _ in range(3):
        with pytest.raises(PeerUnvettedError, match="handshake"):
            await v.admit("10.0.0.9:65002", "10.0.0.9")
    assert probes.asked == ["10.0.0.9:65002"]
    clock.now += REFUSED_FOR + 1
    with pytest.raises(PeerUnvettedError):
        await v.admit("10.0.0.9:65002", "10.0.0.9")
    assert len(probes.asked) == 2


async def test_a_slow_peer_is_asked_to_join_again_and_let_in_once_it_answers() -> None:
    """A live agent on a loaded node answers the handshake late: its join is answered
    503 (join again), not refused, while the probe goes on."""
    probes, clock = Probes({"10.0.0.4:65002"}, delay=0.08), Clock()
    v = vetting(probes, clock, vet_timeout=0.05)
    with pytest.raises(PeerVettingError, match="join again"):
        await v.admit("10.0.0.4:65002", "10.0.0.4")
    await v.admit("10.0.0.4:65002", "10.0.0.4")  # the second join sees the probe end
    assert probes.asked == ["10.0.0.4:65002"]


async def test_a_peer_that_never_answers_is_refused_within_the_timeout() -> None:
    probes, clock = Probes({"10.0.0.3:65002"}, delay=5.0), Clock()
    v = vetting(probes, clock, vet_timeout=0.05)
    async with asyncio.timeout(1):
        for _ in range(PROBE_TRIES):  # each join waits vetTimeout, the probe all of them
            with pytest.raises((PeerVettingError, PeerUnvettedError)):
                await v.admit("10.0.0.3:65002", "10.0.0.3")
        await asyncio.sleep(0.02)
        with pytest.raises(PeerUnvettedError, match="no answer in time"):
            await v.admit("10.0.0.3:65002", "10.0.0.3")
    # it may only have been slow: asked again soon, and let in once it answers
    probes.delay = 0.0
    clock.now += TIMED_OUT_FOR + 1
    await v.admit("10.0.0.3:65002", "10.0.0.3")
    assert len(probes.asked) == 2


async def test_one_source_may_claim_only_so_many_peers() -> None:
    alive = {f"10.0.0.5:{p}" for p in range(10)}
    probes, clock = Probes(alive), Clock()
    v = vetting(probes, clock)
    for port in range(3):
        await v.admit(f"10.0.0.5:{port}", "10.0.0.5")
    with pytest.raises(TooManyRequestsError):
        await v.admit("10.0.0.5:3", "10.0.0.5")
    assert len(probes.asked) == 3  # the capped one was not even probed
    await v.admit("10.0.0.5:0", "10.0.0.5")  # known identities still come in
    await v.admit("10.0.0.5:4", "10.0.0.6")  # another address has its own allowance
    clock.now += SOURCE_WINDOW + 1
    await v.admit("10.0.0.5:3", "10.0.0.5")  # identities not seen for a while age out


async def test_no_cap_when_peers_per_source_is_0_and_the_root_itself_is_refused() -> None:
    probes, clock = Probes({f"127.0.0.1:{p}" for p in range(50)}), Clock()
    v = vetting(probes, clock, peers_per_source=0)
    for port in range(50):
        await v.admit(f"127.0.0.1:{port}", "127.0.0.1")
    with pytest.raises(PeerUnvettedError, match="own address"):
        await v.admit("10.0.0.1:65002", "10.0.0.1")


async def test_a_joiner_giving_up_does_not_cancel_the_others_wait() -> None:
    probes, clock = Probes({"10.0.0.7:65002"}, delay=0.1), Clock()
    v = vetting(probes, clock)
    impatient = asyncio.ensure_future(v.admit("10.0.0.7:65002", "10.0.0.7"))
    patient = asyncio.ensure_future(v.admit("10.0.0.7:65002", "10.0.0.7"))
    await asyncio.sleep(0.01)
    impatient.cancel()
    await patient
    assert probes.asked == ["10.0.0.7:65002"]
    await v.close()
    assert "1 vetted" in repr(v)
