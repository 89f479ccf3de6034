"""The pure parts: quantiles, bounds, bencode, option checks, and the root refusal."""

from __future__ import annotations

import hashlib
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest
import yaml

from shoal.bench.bencode import decode, info_hash, scrape_complete
from shoal.bench.cpu import CpuUse
from shoal.bench.errors import BenchError
from shoal.bench.main import options_from_args
from shoal.bench.modes.base import (
    BenchContext,
    ModeRun,
    NodeResult,
    blob_hosts,
    registries_conf,
    run_again,
)
from shoal.bench.modes.shoal import node_config
from shoal.bench.netns import Host, raise_neighbour_limits, restore_neighbour_limits, retrans_segs
from shoal.bench.report import markdown, mode_bound, node_bound, quantile, stats, to_json
from shoal.bench.runner import BenchOptions, BenchResult, ModeResult
from shoal.cache import choose_piece_size
from shoal.cli import build_parser
from shoal.cli import main as cli_main
from shoal.config import Config, SchedulerPolicy, parse_config


def test_quantile_interpolates_like_numpy() -> None:
    assert quantile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    assert quantile([5.0], 0.95) == 5.0
    assert quantile(list(map(float, range(1, 21))), 0.95) == pytest.approx(19.05)


def _result(mode_times: dict[str, list[float]], tx: int) -> BenchResult:
    opts = BenchOptions(nodes=4, rate_mbit=80, origin_rate_mbit=80)
    result = BenchResult(opts, image_bytes=10_000_000, layer_bytes=9_999_000)
    cpu = CpuUse(cores=2, mean=0.95, busy_share=0.9)
    for mode, times in mode_times.items():
        nodes = [NodeResult(f"n{i}", t) for i, t in enumerate(times)]
        result.modes.append(ModeResult(ModeRun(mode, nodes, cpu), tx, tx, 1.0))
    return result


def test_bounds_and_the_cut_against_direct() -> None:
    result = _result({"direct": [4.0, 4.0, 4.0, 4.0], "shoal": [1.0, 1.0, 1.0, 1.0]}, 10_000_000)
    assert node_bound(result) == pytest.approx(1.0)  # 10 MB at 80 Mbit/s
    assert mode_bound(result, "direct") == pytest.approx(4.0)
    assert mode_bound(result, "proxy") == pytest.approx(4.0)
    assert mode_bound(result, "shoal") == pytest.approx(1.0)
    direct, shoal = stats(result)
    assert shoal.cut_vs_direct == pytest.approx(0.75)
    assert shoal.p95_over_node_bound == pytest.approx(1.0)
    assert shoal.origin_copies == pytest.approx(1.0)
    assert direct.cpu_saturated


def test_bencode_info_hash_and_scrape() -> None:
    info = b"d6:lengthi3e4:name1:a12:piece lengthi16384e6:pieces20:" + b"x" * 20 + b"e"
    torrent = b"d8:announce3:url4:info" + info + b"e"
    assert info_hash(torrent) == hashlib.sha1(info).digest()
    digest = b"h" * 20
    answer = b"d5:filesd20:" + digest + b"d8:completei2e10:incompletei0eeee"
    assert scrape_complete(answer, digest) == 2
    assert scrape_complete(answer, b"z" * 20) == 0
    assert decode(b"li1e3:abce") == [1, b"abc"]


def test_skopeo_mirror_config_and_log_parsing(tmp_path: Path) -> None:
    conf = registries_conf("10.77.0.1:5000", "127.0.0.1:65001")
    assert '[[registry.mirror]]\nlocation = "127.0.0.1:65001"\ninsecure = true' in conf
    assert "[[registry.mirror]]" not in registries_conf("10.77.0.1:5000", None)
    log = tmp_path / "n00.log"
    log.write_text(
        'level=debug msg="GET http://127.0.0.1:65001/v2/a/b/blobs/sha256:01"\n'
        'level=debug msg="GET http://10.77.0.1:5000/v2/a/b/blobs/sha256:02"\n'
        'level=debug msg="GET http://127.0.0.1:65001/v2/a/b/manifests/v1"\n'
    )
    assert blob_hosts(log) == ("127.0.0.1:65001", "10.77.0.1:5000")


def test_refuses_without_root_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    assert cli_main(["bench", "--nodes", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("shoal bench: needs root")


def test_markdown_table_from_the_json() -> None:
    result = _result({"direct": [4.0, 4.0, 4.0, 4.0], "shoal": [1.0, 1.0, 1.0, 1.0]}, 10_000_000)
    text = markdown(to_json(result))
    assert "| shoal | 20 | 4/4 | 1.00 | 1.00 | 1.00 |" in text
    assert "| 75.0% | 1.00 (0.96) | 1.00 (0.96) | 95% ⚠ busy |" in text
    # the piece size the roots chose is on record, so a replay need not guess it
    assert to_json(result)["options"]["piece_bytes"] == choose_piece_size(9_999_000 // 4)


def test_queue_depths_are_a_list_and_checked(capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args(["bench", "--queue-ms", "5,20,50"])
    assert options_from_args(args).queue_ms == (5.0, 20.0, 50.0)
    assert options_from_args(build_parser().parse_args(["bench"])).queue_ms == (20.0,)
    assert cli_main(["bench", "--queue-ms", "5,x"]) == 2
    assert "--queue-ms" in capsys.readouterr().err
    assert cli_main(["bench", "--queue-ms", "0"]) == 2


def test_piece_size_option_is_checked(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["bench", "--piece-kib", "-1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "shoal bench: --piece-kib and --stripes must not be negative"
    args = build_parser().parse_args(["bench", "--piece-kib", "512"])
    assert options_from_args(args).piece_kib == 512


def test_neighbour_limits_are_raised_for_the_run_and_put_back(tmp_path: Path) -> None:
    (tmp_path / "gc_thresh2").write_text("512\n")
    (tmp_path / "gc_thresh3").write_text("4096\n")
    found = raise_neighbour_limits(2000, where=tmp_path)
    assert found == {"gc_thresh2": 512}  # gc_thresh3 was already high enough
    assert (tmp_path / "gc_thresh2").read_text() == "2000"
    assert (tmp_path / "gc_thresh3").read_text() == "4096\n"
    restore_neighbour_limits(found, where=tmp_path)
    assert int((tmp_path / "gc_thresh2").read_text()) == 512


def test_retransmits_are_read_from_the_tcp_lines_of_proc_net_snmp() -> None:
    snmp = (
        "Ip: Forwarding DefaultTTL\nIp: 1 64\n"
        "Tcp: RtoAlgorithm RtoMin ActiveOpens RetransSegs InErrs\n"
        "Tcp: 1 200 17 4242 0\n"
    )
    assert retrans_segs(snmp) == 4242
    with pytest.raises(BenchError, match="RetransSegs"):
        retrans_segs("Tcp: RtoAlgorithm RtoMin\nTcp: 1 200\n", "shb1-n00")


def test_stripes_option_reaches_the_roots_config_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli_main(["bench", "--stripes", "-1"]) == 2
    assert "--stripes must not be negative" in capsys.readouterr().err
    opts = options_from_args(build_parser().parse_args(["bench", "--stripes", "2"]))
    assert opts.stripes == 2
    image = SimpleNamespace(total_size=64 << 20)
    workload = SimpleNamespace(registry_host="10.77.0.2:5000", image=image)

    def config(mode: str, stripes: int) -> Config:
        ctx = SimpleNamespace(
            workload=workload, exporter=False, capacity=0, piece_size=0, stripes=stripes
        )
        host = Host(role="r", netns="x", ip="10.77.0.3", rate_bit=25_000_000, port="p")
        text = node_config(cast(BenchContext, ctx), host, mode, [], tmp_path, "s")
        return parse_config(yaml.safe_load(text))

    assert config("root", 2).swarm.scheduler.stripes == 2
    assert config("agent", 2).swarm.scheduler == SchedulerPolicy()  # the root decides
    assert config("root", 0).swarm.scheduler == SchedulerPolicy()


async def test_a_failed_pull_runs_again_until_it_passes_or_the_tries_end(tmp_path: Path) -> None:
    count, log = tmp_path / "count", tmp_path / "node.log"
    # fails on its first two runs, passes on the third
    script = f'echo run >> {count}; echo "try $(wc -l < {count})"; [ $(wc -l < {count}) -ge 3 ]'
    assert await run_again(None, ["sh", "-c", script], log, 1) == 1
    assert await run_again(None, ["sh", "-c", script], log, 5) == 0
    assert count.read_text().count("run") == 3  # it stopped once it passed
    assert log.read_text().split() == ["try", "1", "try", "2", "try", "3"]
