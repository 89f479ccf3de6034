"""The address an agent gives other nodes when ``P2PConfig.advertise`` is empty."""

from __future__ import annotations

import logging

import pytest

from shoal.config import parse_config
from shoal.observability.node import advertise_host


def test_a_loopback_advertise_address_for_remote_roots_is_warned_about(
    caplog: pytest.LogCaptureFixture,
) -> None:
    remote = parse_config(
        {
            "DeployConfig": {"nodeName": "127.0.1.1:65001"},
            "P2PConfig": {"roots": ["10.1.2.3:65001"]},
        }
    )
    with caplog.at_level(logging.WARNING):
        assert advertise_host(remote) == "127.0.1.1"
    assert "set P2PConfig.advertise" in caplog.text
    caplog.clear()
    local = parse_config(
        {"DeployConfig": {"nodeName": "127.0.0.1:65001"}, "P2PConfig": {"roots": ["127.0.0.1:9"]}}
    )
    with caplog.at_level(logging.WARNING):
        assert advertise_host(local) == "127.0.0.1"  # a one-machine cluster: fine
    assert caplog.text == ""
    listed = parse_config({"P2PConfig": {"listen": "10.0.0.7", "roots": ["10.1.2.3:65001"]}})
    assert advertise_host(listed) == "10.0.0.7"
