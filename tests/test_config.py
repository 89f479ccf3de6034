from __future__ import annotations

from pathlib import Path

import pytest

from shoal.config import GiB, load_config, parse_config
from shoal.errors import ConfigInvalidError

REFERENCE_STYLE = """
DeployConfig:
  mode: agent
  logDir: /dadi-p2p/log
  logAudit: true
  logAuditMode: file
ExporterConfig:
  enable: true
  port: 65006
  standaloneExporterPort: false
ProxyConfig:
  proxyConcurrencyLimit: 64
P2PConfig:
  p2pPort: 65012
  throttleLimitMB: 256
CacheConfig:
  capacity: 1073741824
  aioEnable: 1
UpstreamConfig:
  default: registry.example.com
  registries:
    - host: 127.0.0.1:5000
      plainHTTP: true
"""


def test_reference_keys_parse_into_typed_sections(tmp_path: Path) -> None:
    path = tmp_path / "p2p.yaml"
    path.write_text(REFERENCE_STYLE)
    cfg = load_config(path)
    assert cfg.deploy.log_audit and cfg.deploy.log_audit_mode == "file"
    assert cfg.exporter.port == 65006 and not cfg.exporter.standalone_exporter_port
    assert cfg.proxy.proxy_concurrency_limit == 64
    assert cfg.p2p.p2p_port == 65012 and cfg.p2p.throttle_limit_mb == 256
    assert cfg.cache.capacity == GiB and cfg.cache.aio
    assert cfg.upstream.registry("127.0.0.1:5000") is not None
    assert cfg.upstream.allowed("registry.example.com")
    assert not cfg.upstream.allowed("evil.example.com")


def test_defaults_are_the_reference_defaults() -> None:
    cfg = parse_config(None)
    assert cfg.proxy.port == 65001
    assert cfg.proxy.proxy_concurrency_limit == 128
    assert cfg.p2p.p2p_port == 65002
    assert cfg.exporter.port == 65003
    assert cfg.cache.capacity == 4 * GiB
    assert cfg.p2p.throttle_limit_mb == 512


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"DeployConfig": {"mode": "seed"}}, "DeployConfig.mode"),
        ({"DeployConfig": {"logAuditMod": "file"}}, "unknown key DeployConfig.logAuditMod"),
        ({"Deploy": {}}, "unknown key Deploy"),
        ({"ProxyConfig": {"port": 70000}}, "ProxyConfig.port"),
        ({"ProxyConfig": {"proxyConcurrencyLimit": 0}}, "ProxyConfig.proxyConcurrencyLimit"),
        ({"CacheConfig": {"aioEnable": 2}}, "CacheConfig"),
        ({"CacheConfig": {"capacity": "4G"}}, "CacheConfig.capacity"),
        ({"UpstreamConfig": {"registries": [{"host": "a/b"}]}}, "UpstreamConfig.registries[0]"),
    ],
)
def test_bad_config_is_refused_in_one_line_naming_the_key(
    data: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigInvalidError) as info:
        parse_config(data)
    text = str(info.value)
    assert message in text
    assert "\n" not in text


def test_unreadable_and_malformed_files_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigInvalidError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("DeployConfig: [unclosed\n")
    with pytest.raises(ConfigInvalidError) as info:
        load_config(bad)
    assert "\n" not in str(info.value)
