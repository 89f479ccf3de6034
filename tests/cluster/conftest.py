"""What every chart-cluster test needs: root (network and mount namespaces) and the
real parts the cluster runs."""

from __future__ import annotations

import os

import pytest

from tests.conftest import need_binary


@pytest.fixture(autouse=True)
def tools() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (network and mount namespaces)")
    need_binary("helm", "docker-registry", "htpasswd", "containerd", "ctr", "ip", "setpriv")
