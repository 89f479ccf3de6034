"""A small swarm simulated end to end (the big runs are benchmarks, run by hand)."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace
from pathlib import Path

import pytest

from shoal.cli import build_parser, main
from shoal.sim.baseline import standard_pull
from shoal.sim.engine import SwarmSim
from shoal.sim.main import cpu_from, params_from, parse_image
from shoal.sim.params import GBIT, MEASURED, MIB, NS, CpuCosts, SimParams, measured_costs
from shoal.sim.report import quantile, stats, unpacked
from shoal.swarm import rank_roots

# production's rendezvous hashing puts all four layers on one of the two roots here: that
# root's uplink carries the whole image, and each hop down a stripe tree costs a piece
# time at 16 flows per link (1 MiB pieces: 1.67x; 256 KiB: 1.36x)
SMALL = SimParams(nodes=50, roots=2, layers=(16 * MIB,) * 4, piece_size=MIB // 4, link_bps=1 * GBIT)


def p95(p: SimParams) -> tuple[float, float, int]:
    out = SwarmSim(p).run()
    s = stats(out.layer_done, out.dead, p.layers, 0.0, out.origin_bytes, out.origin_peak_bps)
    return s.p95, out.origin_bytes, s.unfinished


def test_fifty_nodes_finish_near_the_bound_with_one_origin_copy() -> None:
    t, origin, unfinished = p95(SMALL)
    assert unfinished == 0
    assert origin == SMALL.image_bytes  # each blob read from the origin exactly once
    assert t <= 1.5 * SMALL.bound()


def test_runs_are_reproducible() -> None:
    assert p95(SMALL) == p95(SMALL)


def test_with_a_lookahead_each_layer_starts_after_that_share_of_the_one_before() -> None:
    # all of the one before (1.0): a layer starts when the one before is done, so it
    # ends at least its own link time later (at once, they end within a piece time)
    p = replace(SMALL, nodes=12, lookahead=1.0)
    own = p.layers[0] / p.link_bps
    for done in SwarmSim(p).run().layer_done:
        assert all(b - a >= 0.9 * own for a, b in itertools.pairwise(done)), done
    assert all(
        max(done) - min(done) < own for done in SwarmSim(replace(p, lookahead=0.0)).run().layer_done
    )
    # a quarter: overlapping, still one origin copy and everyone done
    _, origin, unfinished = p95(replace(SMALL, nodes=12, lookahead=0.25))
    assert unfinished == 0 and origin == SMALL.image_bytes


def test_stragglers_and_deaths_do_not_stop_the_others() -> None:
    p = SimParams(
        nodes=40,
        layers=(8 * MIB,) * 2,
        piece_size=1 * MIB,
        link_bps=1 * GBIT,
        stragglers=0.1,
        die=0.1,
    )
    out = SwarmSim(p).run()
    s = stats(out.layer_done, out.dead, p.layers, 0.0, out.origin_bytes, out.origin_peak_bps)
    assert sum(out.dead) >= 1
    assert s.unfinished == 0 and s.nodes + sum(out.dead) == 40
    assert out.origin_bytes == p.image_bytes


def test_standard_pull_shares_the_origin() -> None:
    p = SimParams(nodes=10, layers=(100 * MIB,), link_bps=1 * GBIT, origin_bps=1 * GBIT)
    done, peak = standard_pull(p)
    # ten nodes share 1 Gbit/s: each gets a tenth
    assert all(d[0] == pytest.approx(10 * 100 * MIB / GBIT) for d in done)
    assert peak == pytest.approx(GBIT)


def test_blobs_go_to_the_roots_production_would_pick() -> None:
    """One rendezvous function for root, agent and simulator: the simulated owner of each
    blob is the one ``rank_roots`` names, as the agents compute it."""
    sim = SwarmSim(replace(SMALL, roots=3, layers=(MIB,) * 12))
    for b, digest in enumerate(sim.digests):
        assert sim.root_names[sim.owner[b]] == rank_roots(digest, sim.root_names)[0]
    assert len(set(sim.owner)) > 1  # 12 blobs over 3 roots: not all on one


def test_report_arithmetic() -> None:
    assert quantile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.0
    assert quantile([float(i) for i in range(1, 101)], 0.95) == 95.0
    # unpacking one layer at a time, each once downloaded and the previous one unpacked
    assert unpacked([1.0, 1.5], [100, 100], 100.0) == pytest.approx(3.0)
    assert unpacked([1.0, 5.0], [100, 100], 100.0) == pytest.approx(6.0)
    assert parse_image("2x1MiB,512KiB") == (MIB, MIB, 512 * 1024)


def test_cli_runs_writes_json_and_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    js, png = tmp_path / "r.json", tmp_path / "r.png"
    argv = ["sim", "--nodes", "12", "--image", "2x8MiB", "--piece-mib", "1"]
    assert main([*argv, "--link-gbit", "1", "--json", str(js), "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "shoal" in out and "standard pull" in out and "reduction" in out
    data = json.loads(js.read_text())
    assert data["shoal"]["origin_bytes"] == 16 * MIB
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_cli_rejects_a_bad_image(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sim", "--image", "lots"]) == 2
    assert "bad --image" in capsys.readouterr().err


def test_cli_takes_a_lookahead_share_and_refuses_one_past_a_layer(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = build_parser().parse_args(["sim", "--nodes", "4", "--lookahead", "0.25"])
    assert params_from(args).lookahead == 0.25
    assert main(["sim", "--nodes", "4", "--lookahead", "1.5"]) == 2
    assert "--lookahead" in capsys.readouterr().err


def bench_file(tmp_path: Path, modes: list[dict[str, object]], layer_bytes: int,
               **options: object) -> Path:  # fmt: skip
    """A ``shoal bench`` JSON of 8 nodes, 1 root, 100 Mbit/s, 2 x 4 MiB, with ``options``."""
    base = {"nodes": 8, "roots": 1, "rate_mbit": 100, "origin_rate_mbit": 100}
    bench = {
        "options": {**base, "layers": 2, "layer_mib": 4, **options},
        "layer_bytes": layer_bytes,
        "tcp_goodput": 0.95,
        "modes": modes,
    }
    f = tmp_path / "bench.json"
    f.write_text(json.dumps(bench))
    return f


def test_stripes_come_from_the_cli_or_the_bench_being_replayed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = build_parser().parse_args(["sim", "--nodes", "4", "--stripes", "2"])
    assert params_from(args).scheduler.stripes == 2
    assert params_from(build_parser().parse_args(["sim", "--nodes", "4"])).scheduler.stripes == 4
    assert main(["sim", "--nodes", "4", "--stripes", "-2"]) == 2
    assert "--stripes" in capsys.readouterr().err
    f = bench_file(tmp_path, [{"mode": "shoal", "p95_s": 3.0}], 8 * MIB, stripes=2)
    assert main(["sim", "--from-bench", str(f), "--piece-mib", "1"]) == 0
    assert ", 2 stripes," in capsys.readouterr().out
    assert main(["sim", "--from-bench", str(f), "--piece-mib", "1", "--stripes", "8"]) == 0
    assert ", 8 stripes," in capsys.readouterr().out


def test_bench_replay_hook_says_when_there_is_nothing_to_compare(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = bench_file(tmp_path, [{"mode": "direct", "p95_s": 7.0}], 4 * MIB)
    assert main(["sim", "--from-bench", str(f), "--piece-mib", "1"]) == 0
    out = capsys.readouterr().out
    assert "no shoal result" in out and "direct: simulated p95" in out


def test_a_shared_host_cpu_slows_the_swarm_and_the_replay_says_both(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    p = replace(SMALL, nodes=16, roots=1, link_bps=0.1 * GBIT)
    free, _, _ = p95(p)
    # 16 agents each receiving at 12.5 MB/s at 30 ns/byte need 6 cores; give them 1
    busy = replace(p, host_cores=1.0, cpu=CpuCosts(recv=30 * NS, recv_cut=30 * NS))
    slow, origin, unfinished = p95(busy)
    assert unfinished == 0 and origin == p.image_bytes
    assert slow > 1.5 * free
    shoal = [{"mode": "shoal", "p95_s": 3.0}]
    f = bench_file(tmp_path, shoal, 8 * MIB)
    assert main(["sim", "--from-bench", str(f), "--host-cores", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "one host of 0.5 cores" in out and "(links alone:" in out
    assert "piece 4 MiB" in out  # a bench from before --piece-kib: the old default
    # shoal chose the piece size by blob size: 1 MiB then
    f = bench_file(tmp_path, shoal, 8 * MIB, piece_kib=0)
    assert main(["sim", "--from-bench", str(f)]) == 0
    assert "piece 1 MiB" in capsys.readouterr().out
    # a bench that says what its roots chose
    f = bench_file(tmp_path, shoal, 8 * MIB, piece_kib=0, piece_bytes=512 << 10)
    assert main(["sim", "--from-bench", str(f)]) == 0
    assert "piece 0.5 MiB" in capsys.readouterr().out


def test_cpu_costs_come_from_the_nearest_rate_then_the_nearest_piece_size() -> None:
    assert measured_costs(25, 512 << 10) == ((25.0, 512), MEASURED[(25.0, 512)])
    assert measured_costs(20, 1 << 20)[0] == (25.0, 1024)
    assert measured_costs(30, 300 << 10)[0] == (25.0, 512)
    # the rate decides first: at 100 Mbit/s only 1 MiB pieces were measured
    assert measured_costs(90, 512 << 10)[0] == (100.0, 1024)
    args = build_parser().parse_args(["sim", "--cpu-send-ns", "3"])
    costs = cpu_from(args, 25, 512 << 10)
    assert costs.send == 3 * NS and costs.recv == MEASURED[(25.0, 512)].recv
