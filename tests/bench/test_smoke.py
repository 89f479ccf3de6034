"""Every mode end to end at N=3 with a tiny image: right bytes everywhere, nothing left.

Times are not asserted: this machine is shared and the figures belong to ``shoal bench``.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from shoal.bench.netns import STATE_DIR, list_netns
from shoal.bench.report import plot, stats, write_json
from shoal.bench.runner import BenchOptions, run_benchmark
from tests.bench.conftest import need_root_and

pytestmark = [
    need_root_and(
        "ip", "tc", "skopeo", "docker-registry", "aria2c", "opentracker", "mktorrent", "curl"
    ),
    pytest.mark.e2e,
    pytest.mark.slow,
]


def _routes() -> str:
    return subprocess.run(["ip", "route"], capture_output=True, text=True, check=True).stdout


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if text.encode() in cmdline:
            found.append(int(entry))
    return found


@pytest.mark.timeout(600)
async def test_every_mode_pulls_the_right_bytes_and_leaves_nothing(tmp_path: Path) -> None:
    opts = BenchOptions(nodes=3, roots=1, layers=2, layer_mib=0.5, timeout_s=120)
    result = await run_benchmark(opts)

    assert [m.run.mode for m in result.modes] == ["direct", "proxy", "bittorrent", "shoal"]
    for m in result.modes:
        assert m.skipped is None, f"{m.run.mode}: {m.skipped}"
        assert len(m.run.nodes) == 3
        for node in m.run.nodes:
            # a node counts only after its copy was checked against the image's digests
            assert node.error is None, f"{m.run.mode} {node.node}: {node.error}"
            assert node.seconds is not None and node.seconds > 0
        assert m.origin_tx_bytes > 0
    by_mode = {m.run.mode: m for m in result.modes}
    assert by_mode["direct"].origin_blob_bytes >= 3 * result.layer_bytes
    assert by_mode["proxy"].run.extra["via_mirror"] == 1.0
    assert by_mode["shoal"].run.extra["via_mirror"] == 1.0
    # the links' own counters: every layer left the root at least once; the direct mode
    # lets the nodes upload only their requests and ACKs
    links = {m: {k: int(v) for k, v in by_mode[m].run.extra.items() if k.startswith("link_")}
             for m in ("direct", "shoal")}  # fmt: skip
    assert links["shoal"]["link_roots_tx_bytes"] >= 0.9 * result.layer_bytes
    assert links["direct"]["link_nodes_tx_bytes"] < 0.5 * result.layer_bytes
    assert all(int(m.run.extra["link_origin_retransmits"]) >= 0 for m in result.modes)

    write_json(result, tmp_path / "bench.json")
    plot(result, tmp_path / "bench.png")
    doc = json.loads((tmp_path / "bench.json").read_text())
    assert [m["ok"] for m in doc["modes"]] == [3, 3, 3, 3]
    assert (tmp_path / "bench.png").stat().st_size > 1000
    assert all(s.p95 >= s.p50 for s in stats(result))

    # nothing of the run is left: namespaces, route, state file, files, processes
    assert result.prefix
    assert not [ns for ns in list_netns() if ns.startswith(result.prefix + "-")]
    assert result.subnet.startswith("10.77.")
    assert f"blackhole {result.subnet}" not in _routes()
    assert not (STATE_DIR / f"{result.prefix}.json").exists()
    assert not result.workdir.exists()
    assert _processes_mentioning(str(result.workdir)) == []
