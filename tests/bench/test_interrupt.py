"""Ctrl-C or SIGTERM in the middle of a run: one line, non-zero exit, nothing left behind.

The ``SIGINT-inherited-ignored`` case starts the bench the way a non-interactive shell
starts a background job (``make test &``): with SIGINT ignored. That was the flake of
this file: run from such a shell, the bench never saw the signal and exited 0.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shoal.bench.netns import STATE_DIR, list_netns
from tests.bench.conftest import need_root_and

pytestmark = [need_root_and("ip", "tc", "skopeo", "docker-registry"), pytest.mark.slow]


@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    ("sig", "ignored_at_start"),
    [(signal.SIGINT, False), (signal.SIGINT, True), (signal.SIGTERM, False)],
    ids=["SIGINT", "SIGINT-inherited-ignored", "SIGTERM"],
)
def test_a_signal_mid_run_removes_everything(
    tmp_path: Path, sig: signal.Signals, ignored_at_start: bool
) -> None:
    argv = [sys.executable, "-m", "shoal", "bench", "-n", "2", "--layers", "1",
            "--layer-mib", "40", "--rate", "20", "--modes", "direct",
            "--out", str(tmp_path / "out")]  # fmt: skip
    if ignored_at_start:  # as `cmd &` in a shell without job control; exec keeps the PID
        argv = ["sh", "-c", 'trap "" INT; exec "$@"', "sh", *argv]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    prefix = f"shb{proc.pid}"
    try:
        deadline = time.monotonic() + 60
        # wait until the nodes are pulling: the origin's namespace exists and skopeo runs
        while not any(ns == f"{prefix}-n01" for ns in list_netns()) or not _pulling(prefix):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the run never started pulling"
            time.sleep(0.2)
        time.sleep(1.0)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0
    lines = err.strip().splitlines()
    assert lines and lines[-1].startswith("shoal bench:"), err
    assert "Traceback" not in err
    assert not [ns for ns in list_netns() if ns.startswith(prefix + "-")]
    assert not (STATE_DIR / f"{prefix}.json").exists()
    assert not [p for p in os.listdir("/var/tmp") if p.startswith(prefix + "-")]
    assert not _pulling(prefix)


def _pulling(prefix: str) -> bool:
    """Is any process of this run's namespaces alive (skopeo, the registry)?"""
    for ns in list_netns():
        if ns.startswith(prefix + "-n"):
            out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
            if out.stdout.strip():
                return True
    return False
