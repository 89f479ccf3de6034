"""A 12-agent swarm through the simulator's engine: the scheduler, the download machines
and their pickers, paired as the agent and the root pair them.

``SwarmSim`` drives the real ``Scheduler`` and ``BlobDownload`` machines (no driver of
its own here), so these check the message contract between the two halves end to end:
who reports whom, what the scheduler does about it, what the origin and the root send.
Speed goals live in ``shoal sim`` and the benchmarks, not here; the time bounds below
are what routing around a fault means (not waiting for it), with wide margins.
"""

from __future__ import annotations

from dataclasses import replace

from shoal.sim.engine import SwarmSim
from shoal.sim.params import GBIT, MIB, SimParams
from shoal.sim.report import Outcome
from shoal.swarm import BlobSwarm

AGENTS = 12
#: one blob of 24 pieces, every link 1 Gbit/s, the origin too: the bound is 0.2 s
SMALL = SimParams(
    nodes=AGENTS, layers=(24 * MIB,), piece_size=MIB, link_bps=1 * GBIT, origin_bps=1 * GBIT
)


def run(p: SimParams) -> tuple[SwarmSim, Outcome, BlobSwarm]:
    """The run, and the blob's swarm as its root's scheduler saw it at the end (the last
    ``Have`` batches may still be on their way: the run ends when every agent is done)."""
    sim = SwarmSim(p)
    out = sim.run()
    swarm = sim.tier.scheds[sim.owner[0]].swarm(sim.digests[0])
    return sim, out, swarm


def finished(sim: SwarmSim, out: Outcome) -> dict[str, float]:
    """Agent name -> when its download ended (inf: it did not)."""
    return {sim.name[a]: max(out.layer_done[k]) for k, a in enumerate(sim.agents)}


def test_small_swarm_completes_with_the_origin_read_once() -> None:
    sim, out, swarm = run(SMALL)
    done = finished(sim, out)
    assert max(done.values()) <= 2 * SMALL.bound()  # 12 serial copies would be 12x
    assert len(swarm.members) == AGENTS + 1  # every agent joined the one root, beside it
    assert out.origin_bytes == SMALL.image_bytes  # the root read the origin once
    # the root (the seed) sent about one copy: one child per stripe, the rest peer to peer
    assert out.root_upload_bytes <= 1.1 * SMALL.image_bytes
    assert out.peer_bytes >= (AGENTS - 1.1) * SMALL.image_bytes


def test_a_parent_sending_bad_pieces_is_reported_and_banned() -> None:
    p = replace(SMALL, bad=1 / AGENTS)
    sim, out, swarm = run(p)
    (liar,) = [sim.name[a] for a in sim.agents if sim.bad[a]]
    others = [m for pid, m in swarm.members.items() if pid not in (liar, swarm.seed.peer.id)]
    # its children saw the hashes fail and reported it "bad-piece": each bans it for
    # itself, and reports from two agents (``global_ban_reporters``) ban it for all
    reporters = [m for m in others if liar in m.bans]
    assert len(reporters) >= p.scheduler.global_ban_reporters
    assert swarm.members[liar].peer.banned_until > 0.0
    # the swarm finished without the origin: the pieces came again from good parents
    assert all(t < float("inf") for t in finished(sim, out).values())
    assert out.origin_bytes == p.image_bytes
    assert not out.notes  # no download failed or fell back to the origin


def test_a_slow_parent_is_routed_around() -> None:
    p = replace(SMALL, stragglers=1 / AGENTS, slowdown=20.0)
    sim, out, swarm = run(p)
    (slow,) = [sim.name[a] for a in sim.agents if sim.net.up[a] < p.link_bps]
    assert swarm.members[slow].peer.slow  # its children reported it "slow"
    done = finished(sim, out)
    # had its children waited for it, its uplink (1/20 of the others') would have sent
    # its stripe (a quarter of the blob) to each of its 4 children: 4 s
    waited = 4 * (p.image_bytes / 4) / (p.link_bps / p.slowdown)
    assert max(t for name, t in done.items() if name != slow) < waited / 2
    assert done[slow] < float("inf")  # and it finished too
    assert out.origin_bytes == p.image_bytes
