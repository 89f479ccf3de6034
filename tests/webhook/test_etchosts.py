from __future__ import annotations

import tomllib
from pathlib import Path

from shoal.cli import main
from shoal.webhook.etchosts import BEGIN, END, update_hosts_file, with_block
from shoal.webhook.hoststoml import distributed_hosts

NODE_HOSTS = "127.0.0.1 localhost\n::1 localhost ip6-localhost\n10.0.0.5 node-a.internal node-a\n"


def test_block_is_added_replaced_and_removed(tmp_path: Path) -> None:
    path = tmp_path / "hosts"
    path.write_text(NODE_HOSTS)
    assert update_hosts_file(
        path, ["a.distributed.example.com:65001", "docker.distributed.io:65001"]
    )
    text = path.read_text()
    assert text.startswith(NODE_HOSTS)
    assert (
        f"{BEGIN}\n127.0.0.1 a.distributed.example.com\n127.0.0.1 docker.distributed.io\n{END}\n"
        in text
    )
    assert not update_hosts_file(
        path, ["docker.distributed.io:65001", "a.distributed.example.com:65001"]
    )
    update_hosts_file(path, ["docker.distributed.io:65001"])
    assert "a.distributed.example.com" not in path.read_text()
    assert path.read_text().startswith(NODE_HOSTS)
    update_hosts_file(path, [])
    assert path.read_text() == NODE_HOSTS


def test_lines_after_the_block_survive() -> None:
    text = with_block(NODE_HOSTS, ["x.distributed.y.z:65001"]) + "192.0.2.1 later\n"
    again = with_block(text, ["x.distributed.y.z:65001"])
    assert "192.0.2.1 later" in again and again.count(BEGIN) == 1


def test_resolved_locally_the_host_is_the_distributed_name() -> None:
    f = distributed_hosts("ghcr.io", "http://127.0.0.1:65001", 65001, resolve_locally=True)
    assert f is not None
    doc = tomllib.loads(f.text)
    assert doc["server"] == "https://ghcr.io"
    assert list(doc["host"]) == ["http://ghcr.distributed.io:65001"]


def test_cli_writes_both(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text(NODE_HOSTS)
    certs = tmp_path / "certs.d"
    rc = main(
        [
            "node-setup",
            "--hosts-dir",
            str(certs),
            "--distributed",
            "ghcr.io",
            "--mirror",
            "quay.io",
            "--etc-hosts",
            str(hosts),
        ]
    )
    assert rc == 0
    assert "127.0.0.1 ghcr.distributed.io\n" in hosts.read_text()
    assert "quay" not in hosts.read_text()
    doc = tomllib.loads((certs / "ghcr.distributed.io:65001" / "hosts.toml").read_text())
    assert list(doc["host"]) == ["http://ghcr.distributed.io:65001"]
    mirror = tomllib.loads((certs / "quay.io" / "hosts.toml").read_text())
    assert list(mirror["host"]) == ["http://127.0.0.1:65001"]
