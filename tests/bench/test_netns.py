"""The run's hosts: built, shaped, reachable only inside, and removed without a trace."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from shoal.bench.netns import Cluster, cleanup_leftovers, list_netns
from shoal.bench.shaping import shaped_rate, tbf_argv
from tests.bench.conftest import need_root_and

pytestmark = need_root_and("ip", "tc")


def test_tbf_argv_sets_rate_and_a_bucket_deep_enough() -> None:
    argv = tbf_argv("eth0", 100_000_000)
    assert argv[argv.index("rate") + 1] == "100000000bit"
    assert int(argv[argv.index("burst") + 1]) >= 32 * 1024


def test_cluster_up_shaped_reachable_and_gone_after_down(tmp_path: Path) -> None:
    cluster = Cluster(
        nodes_n=2,
        roots_n=1,
        rate_bit=50_000_000,
        origin_rate_bit=80_000_000,
        workdir=tmp_path / "w",
        prefix="shb9999991",
        state_dir=tmp_path / "state",
    )
    try:
        cluster.up()
        assert cluster.origin is not None
        assert "nodes=2" in repr(cluster)
        assert shaped_rate(cluster.origin.netns, "eth0") == 80_000_000
        assert shaped_rate(cluster.bridge_ns, cluster.nodes[0].port) == 50_000_000
        ping = subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                cluster.nodes[1].netns,
                sys.executable,
                "-c",
                f"import socket; socket.create_connection(('{cluster.origin.ip}', 9), 2)",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        # a refused connection proves the route and the origin answer inside the namespaces
        assert "ConnectionRefusedError" in ping.stderr
        routes = subprocess.run(["ip", "route"], capture_output=True, text=True, check=True)
        assert f"blackhole {cluster.subnet}" in routes.stdout
    finally:
        cluster.down()
    assert not [ns for ns in list_netns() if ns.startswith("shb9999991")]
    routes = subprocess.run(["ip", "route"], capture_output=True, text=True, check=True)
    assert cluster.subnet not in routes.stdout
    assert not (tmp_path / "state" / "shb9999991.json").exists()


def test_cleanup_removes_a_dead_runs_leftovers(tmp_path: Path) -> None:
    cluster = Cluster(
        nodes_n=1,
        roots_n=0,
        rate_bit=50_000_000,
        origin_rate_bit=50_000_000,
        workdir=tmp_path / "w",
        prefix="shb9999992",
        state_dir=tmp_path / "state",
        owner_pid=9999992,
    )
    cluster.up()  # and "crash": no down(); pid 9999992 is not alive (pid_max is lower)
    removed = cleanup_leftovers(tmp_path / "state")
    assert "shb9999992" in removed
    assert not [ns for ns in list_netns() if ns.startswith("shb9999992")]
    routes = subprocess.run(["ip", "route"], capture_output=True, text=True, check=True)
    assert cluster.subnet not in routes.stdout
