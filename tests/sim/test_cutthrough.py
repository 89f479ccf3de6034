"""Cut-through by chunks in the simulator: an agent passes a piece on as it arrives.

``SimParams.chunk_bytes`` > 0 models the agents' 64 KiB chunk hashes (a read waiting at
an agent starts once the agent's own flow of the piece has brought its first chunk and
never outruns that flow); 0 is store-and-forward, the model the published replays were
computed with, and must give those figures exactly.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from shoal.cli import main
from shoal.sim.engine import SwarmSim
from shoal.sim.network import Flow
from shoal.sim.params import GBIT, MIB, SimParams
from shoal.sim.report import stats
from shoal.swarm import FetchError, SchedulerPolicy

#: one stripe: every agent has one child slot in the one tree, so three agents make
#: the chain root -> n0 -> n1 -> n2; 8 pieces of 1 MiB at 1 Gbit/s (8.4 ms a piece)
CHAIN = SimParams(
    nodes=3,
    layers=(8 * MIB,),
    piece_size=MIB,
    link_bps=1 * GBIT,
    origin_bps=1 * GBIT,
    scheduler=SchedulerPolicy(stripes=1),
)
#: 50 agents, 2 roots, 4 x 16 MiB in 256 KiB pieces (as test_sim.py's)
SWARM = SimParams(nodes=50, roots=2, layers=(16 * MIB,) * 4, piece_size=MIB // 4, link_bps=GBIT)


class Recorder(SwarmSim):
    """The run, with every flow's start, end and upstream, every piece's landing and
    every failed fetch written down; checks the upstream cap after every settle."""

    def __init__(self, p: SimParams) -> None:
        super().__init__(p)
        self.began: dict[Flow, float] = {}
        self.upstream: dict[Flow, Flow] = {}
        self.done: dict[Flow, float] = {}
        self.landed: dict[tuple[int, int, int], float] = {}
        self.failures: list[tuple[int, int, int, FetchError]] = []
        self.outran = 0  # settles after which a flow ran faster than its upstream
        self.unchecked = 0  # flows passed on before their sender had the piece's hashes

    def _start_flow(self, src: int, dst: int, b: int, i: int) -> bool:
        ok = super()._start_flow(src, dst, b, i)
        f = self.flows.get((src, dst, b, i))
        if ok and f is not None:
            self.began[f] = self.now
            if f.up is not None:
                self.upstream[f] = f.up
                self.unchecked += self.dl[src][b].book.known(i) is None
        return ok

    def end_flow(self, f: Flow, done: bool = False) -> None:
        if done:
            self.done[f] = self.now
        super().end_flow(f, done)

    def _stored(self, a: int, b: int, parent: str, i: int) -> None:
        super()._stored(a, b, parent, i)
        if self.holds(a, b, i):
            self.landed.setdefault((a, b, i), self.now)

    def failed_later(self, c: int, b: int, parent: int, i: int, why: FetchError) -> None:
        self.failures.append((c, parent, i, why))
        super().failed_later(c, b, parent, i, why)

    def _settle(self) -> None:
        super()._settle()
        for a in self.agents:
            for g in self.net.ups[a]:
                if g.up is not None and g.rate > g.up.rate * (1 + 1e-9):
                    self.outran += 1


def spread(layer_done: list[list[float]]) -> tuple[float, float]:
    """When the first agent and the last were done (the head of the chain and its tail,
    whichever agents those are: the join order follows string hashing)."""
    done = [max(d) for d in layer_done]
    return min(done), max(done)


def test_a_chain_passes_each_piece_on_while_it_arrives() -> None:
    slow = Recorder(replace(CHAIN, chunk_bytes=0))
    fast = Recorder(CHAIN)  # the default: 64 KiB chunks
    assert fast.p.chunk_bytes == 64 << 10
    before, after = slow.run(), fast.run()
    piece = CHAIN.piece_size / CHAIN.link_bps
    # store-and-forward: each agent hop holds every piece back a piece time; passed on,
    # the last agent ends a few chunk times after the first (4 chunks at 8.4 ms/MiB)
    (head0, tail0), (head, tail) = spread(before.layer_done), spread(after.layer_done)
    assert tail0 - head0 > 1.5 * piece
    assert tail - head < 0.25 * piece
    assert tail < tail0
    assert before.streamed == 0 and not slow.upstream
    # agent-to-agent reads started before their sender held the piece; the root's never
    assert after.streamed == len(fast.upstream) > 0
    for f in fast.upstream:
        assert not fast.is_root[f.src]
        assert fast.began[f] < fast.landed[(f.src, *f.payload)]
    assert after.origin_bytes == CHAIN.image_bytes


def test_no_child_has_a_piece_before_its_parent_has_it() -> None:
    # (with a 5 ms control round trip, the hashes often come after the first chunk: the
    # reads wait for them, as a real agent cannot pass on what it cannot check)
    for p in (
        SWARM,
        replace(SWARM, stragglers=0.1, slowdown=8.0),
        replace(SWARM, die=0.1),
        replace(SWARM, control_rtt=0.005),
    ):
        sim = Recorder(p)
        out = sim.run()
        assert out.streamed > 0.5 * out.pieces  # most agent hops pass pieces on
        assert sim.outran == 0  # never faster than the flow it passes on
        assert sim.unchecked == 0
        for f, up in sim.upstream.items():
            if f not in sim.done:
                continue
            # its last byte came after its parent's last byte of the piece (or the
            # parent had the piece from another flow by then: an endgame duplicate)
            parent_had = sim.landed.get((f.src, *f.payload), float("inf"))
            assert sim.done.get(up, parent_had) <= sim.done[f] or parent_had <= sim.done[f]
        s = stats(out.layer_done, out.dead, p.layers, 0.0, out.origin_bytes, out.origin_peak_bps)
        assert s.unfinished == 0
        assert out.origin_bytes == p.image_bytes


def test_passing_pieces_on_costs_the_receiver_a_cut_through_receive() -> None:
    # CPU-bound (16 agents at 12.5 MB/s, 1 core): the swarm still finishes, and each
    # streamed piece was charged ``agent_in_cut``, so a dearer cut makes it slower
    p = replace(
        SWARM, nodes=16, roots=1, layers=(16 * MIB,) * 2, link_bps=0.1 * GBIT, host_cores=1.0
    )
    cheap = replace(p.cpu, recv_cut=p.cpu.recv)
    dear = replace(p.cpu, recv_cut=3 * p.cpu.recv)
    runs = [SwarmSim(replace(p, cpu=c)).run() for c in (cheap, dear)]
    assert all(o.streamed > 0 for o in runs)
    t = [max(max(d) for d in o.layer_done) for o in runs]
    assert t[1] > 1.05 * t[0]


def test_a_parent_dying_mid_stream_fails_that_fetch_and_the_child_still_finishes() -> None:
    # which agent heads the chain follows the join order (string hashing varies from one
    # process to the next): a first run in this process finds it, a second kills it
    probe = Recorder(CHAIN)
    probe.run()
    head = min((t, f.dst) for f, t in probe.began.items() if probe.is_root[f.src])[1]
    # the scheduler puts the second agent under the third, whose copy of piece 0 streams
    # from the second: neither may pass it to the other (``cache.following.streamable``)
    # until the roots hear of the death (``peer_timeout``, 15 s) and the root stands in,
    # as in store-and-forward; 50 x the bound (3.4 s) would end the run before
    sim = Recorder(replace(CHAIN, max_time=60.0))
    others = [a for a in sim.agents if a != head]
    # at 12 ms the head receives piece 0 from the root and passes it on down the chain
    sim.at(0.012, lambda: sim._die(head))
    out = sim.run()
    streaming = [f for f in sim.upstream if sim.began[f] < 0.012 and f not in sim.done]
    fed = [f for f in streaming if f.src == head]
    assert fed
    # the flows the head fed ended short: each child was told UNREACHABLE (a real parent
    # closes a connection whose body it cannot finish); the flows below them go on from
    # another fetch of the piece, if their parent has one, or end too
    for f in fed:
        assert (f.dst, f.src, f.payload[1], FetchError.UNREACHABLE) in sim.failures
    assert len(streaming) == 2  # the whole chain below the head was being passed piece 0
    assert out.dead[sim.agents.index(head)]
    for a in others:
        assert max(out.layer_done[sim.agents.index(a)]) < CHAIN.scheduler.peer_timeout + 1.0
    assert out.origin_bytes == CHAIN.image_bytes
    assert sim.outran == 0


def test_store_and_forward_gives_the_figures_of_the_model_before_chunks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The README's replays come from bench JSONs written before chunk hashes: such a
    file replays store-and-forward, to the float it gave before (the number was
    computed at d759564, before ``chunk_bytes`` existed)."""
    options: dict[str, object] = {
        "nodes": 16,
        "roots": 1,
        "rate_mbit": 25,
        "origin_rate_mbit": 25,
        "layers": 4,
        "layer_mib": 16,
        "piece_kib": 0,
        "piece_bytes": 512 << 10,
    }
    bench = {
        "layer_bytes": 4 * 16 * MIB + 4 * 2048,
        "tcp_goodput": 0.95,
        "modes": [{"mode": "shoal", "p95_s": 30.0, "queue_ms": 5}],
    }

    def replay(extra: dict[str, object], *flags: str) -> tuple[float, float, str]:
        f, out = tmp_path / "bench.json", tmp_path / "out.json"
        f.write_text(json.dumps({**bench, "options": {**options, **extra}}))
        argv = ["sim", "--from-bench", str(f), "--host-cores", "2", "--json", str(out)]
        assert main([*argv, *flags]) == 0
        res = json.loads(out.read_text())
        return (
            res["sim"]["shoal"]["p95"],
            res["links_only"]["shoal"]["p95"],
            capsys.readouterr().out,
        )

    old, links, text = replay({})
    assert (old, links) == (26.84354559999998, 26.84354559999998)
    assert "once it is whole (store-and-forward)" in text
    # a bench of agents with chunk hashes says so, and replays with them
    new, _, text = replay({"chunk_bytes": 64 << 10})
    assert new < old - 1.0 and "64 KiB at a time" in text
    # the flag wins over the file
    assert replay({"chunk_bytes": 64 << 10}, "--chunk-kib", "0")[0] == old


def test_cli_takes_a_chunk_size(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["sim", "--nodes", "4", "--image", "2x2MiB", "--piece-mib", "0.5", "--no-baseline"]
    assert main(argv) == 0
    assert "64 KiB at a time" in capsys.readouterr().out
    assert main([*argv, "--chunk-kib", "16"]) == 0
    assert "16 KiB at a time" in capsys.readouterr().out
    assert main([*argv, "--chunk-kib", "-1"]) == 2
    assert "--chunk-kib" in capsys.readouterr().err
