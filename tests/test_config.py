from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

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


# --- every bad config is one line naming its key (issue 17, item 8) ------------------

#: (what is wrong, the role, the config as YAML text or data, what the line must name)
BAD_CONFIGS: list[tuple[str, str, object, str]] = [
    ("unknown mode", "agent", {"DeployConfig": {"mode": "seed"}}, "DeployConfig.mode"),
    ("mode of the other role", "agent", {"DeployConfig": {"mode": "root"}}, "DeployConfig.mode"),
    (
        "typo in a key",
        "agent",
        {"DeployConfig": {"logAuditMod": "file"}},
        "DeployConfig.logAuditMod",
    ),
    ("unknown section", "agent", {"Deploy": {}}, "unknown key Deploy"),
    ("section is a list", "agent", {"ProxyConfig": [1]}, "ProxyConfig"),
    ("port too high", "agent", {"ProxyConfig": {"port": 70000}}, "ProxyConfig.port"),
    (
        "no concurrency",
        "agent",
        {"ProxyConfig": {"proxyConcurrencyLimit": 0}},
        "ProxyConfig.proxyConcurrencyLimit",
    ),
    ("listen not an IP", "agent", {"ProxyConfig": {"listen": "not-an-ip"}}, "ProxyConfig.listen"),
    ("peer listen not an IP", "agent", {"P2PConfig": {"listen": "300.1.1.1"}}, "P2PConfig.listen"),
    (
        "header timeout 0",
        "agent",
        {"ProxyConfig": {"headerTimeout": 0}},
        "ProxyConfig.headerTimeout",
    ),
    (
        "idle timeout a word",
        "agent",
        {"ProxyConfig": {"idleTimeout": "long"}},
        "ProxyConfig.idleTimeout",
    ),
    (
        "negative connection cap",
        "agent",
        {"ProxyConfig": {"maxConnections": -1}},
        "ProxyConfig.maxConnections",
    ),
    ("aioEnable 2", "agent", {"CacheConfig": {"aioEnable": 2}}, "CacheConfig.aioEnable"),
    ("capacity with a unit", "agent", {"CacheConfig": {"capacity": "4G"}}, "CacheConfig.capacity"),
    ("pieceSize 1", "agent", {"CacheConfig": {"pieceSize": 1}}, "CacheConfig.pieceSize"),
    ("pieceSize 1 GiB", "agent", {"CacheConfig": {"pieceSize": 1 << 30}}, "CacheConfig.pieceSize"),
    (
        "cache path unwritable",
        "agent",
        {"CacheConfig": {"path": "/proc/shoal-cache"}},
        "CacheConfig.path",
    ),
    (
        "cache path under a file",
        "agent",
        {"CacheConfig": {"path": "/etc/hostname/cache"}},
        "CacheConfig.path",
    ),
    (
        "log dir unwritable",
        "agent",
        {"DeployConfig": {"logAudit": True, "logAuditMode": "file", "logDir": "/proc/shoal-log"}},
        "DeployConfig.logDir",
    ),
    (
        "logAudit a word",
        "agent",
        {"DeployConfig": {"logAudit": "sometimes"}},
        "DeployConfig.logAudit",
    ),
    ("exporter port negative", "agent", {"ExporterConfig": {"port": -5}}, "ExporterConfig.port"),
    (
        "exporter enable a word",
        "agent",
        {"ExporterConfig": {"enable": "maybe"}},
        "ExporterConfig.enable",
    ),
    ("roots a string", "agent", {"P2PConfig": {"roots": "root:65001"}}, "P2PConfig.roots"),
    ("a root without a port", "agent", {"P2PConfig": {"roots": ["root"]}}, "P2PConfig.roots"),
    (
        "negative throttle",
        "agent",
        {"P2PConfig": {"throttleLimitMB": -1}},
        "P2PConfig.throttleLimitMB",
    ),
    ("root timeout 0", "agent", {"P2PConfig": {"rootTimeout": 0}}, "P2PConfig.rootTimeout"),
    (
        "fallback limit a word",
        "agent",
        {"P2PConfig": {"fallbackLimit": "x"}},
        "P2PConfig.fallbackLimit",
    ),
    (
        "secret too short",
        "agent",
        {"P2PConfig": {"roots": ["r:1"], "secret": "short"}, "ControlConfig": {"tls": False}},
        "P2PConfig.secret",
    ),
    (
        "secret file missing",
        "agent",
        {
            "P2PConfig": {"roots": ["r:1"], "secretFile": "/nonexistent/s"},
            "ControlConfig": {"tls": False},
        },
        "P2PConfig.secretFile",
    ),
    (
        "control CA missing",
        "agent",
        {
            "P2PConfig": {"roots": ["r:1"], "secret": "s" * 16},
            "ControlConfig": {"caFile": "/nonexistent/ca"},
        },
        "ControlConfig.caFile",
    ),
    ("control tls a word", "agent", {"ControlConfig": {"tls": "yes"}}, "ControlConfig.tls"),
    (
        "peers per source negative",
        "agent",
        {"ControlConfig": {"peersPerSource": -1}},
        "ControlConfig.peersPerSource",
    ),
    ("vet timeout 0", "agent", {"ControlConfig": {"vetTimeout": 0}}, "ControlConfig.vetTimeout"),
    (
        "root without its certificate",
        "root",
        {"ControlConfig": {"certFile": "/nonexistent/tls.crt"}},
        "ControlConfig.certFile",
    ),
    (
        "root certificate not PEM",
        "root",
        {"ControlConfig": {"certFile": "@garbage", "keyFile": "@garbage"}},
        "ControlConfig.certFile",
    ),
    ("upstream timeout 0", "agent", {"UpstreamConfig": {"timeout": 0}}, "UpstreamConfig.timeout"),
    (
        "negative access ttl",
        "agent",
        {"UpstreamConfig": {"accessCheckTtl": -1}},
        "UpstreamConfig.accessCheckTtl",
    ),
    (
        "registries a map",
        "agent",
        {"UpstreamConfig": {"registries": {"host": "a"}}},
        "UpstreamConfig.registries",
    ),
    (
        "registry without host",
        "agent",
        {"UpstreamConfig": {"registries": [{"plainHTTP": True}]}},
        "UpstreamConfig.registries[0]",
    ),
    (
        "registry host with a path",
        "agent",
        {"UpstreamConfig": {"registries": [{"host": "a/b"}]}},
        "UpstreamConfig.registries[0].host",
    ),
    (
        "plainHTTP a word",
        "agent",
        {"UpstreamConfig": {"registries": [{"host": "a", "plainHTTP": "yes"}]}},
        "UpstreamConfig.registries[0].plainHTTP",
    ),
    (
        "registry CA missing",
        "agent",
        {"UpstreamConfig": {"registries": [{"host": "a", "caFile": "/nonexistent/ca.pem"}]}},
        "UpstreamConfig.registries[0].caFile",
    ),
    (
        "registry CA not PEM",
        "agent",
        {"UpstreamConfig": {"registries": [{"host": "a", "caFile": "@garbage"}]}},
        "UpstreamConfig.registries[0].caFile",
    ),
    (
        "redirect host with a space",
        "agent",
        {"UpstreamConfig": {"registries": [{"host": "a", "redirectHosts": ["x y"]}]}},
        "UpstreamConfig.registries[0].redirectHosts",
    ),
    (
        "accelerator host a URL",
        "agent",
        {"AcceleratorConfig": {"allowedHosts": ["http://x/"]}},
        "AcceleratorConfig.allowedHosts",
    ),
    (
        "loopbackOnly a number",
        "agent",
        {"AcceleratorConfig": {"loopbackOnly": 3}},
        "AcceleratorConfig.loopbackOnly",
    ),
    ("top level a list", "agent", "- a\n- b\n", "(top level)"),
    ("broken YAML", "agent", "DeployConfig: [unclosed\n", "while parsing a flow sequence"),
    ("not UTF-8", "agent", b"DeployConfig:\n  mode: \xff\xfe\n", "not UTF-8"),
]


@pytest.mark.parametrize(
    ("role", "config", "key"),
    [pytest.param(role, cfg, key, id=label) for label, role, cfg, key in BAD_CONFIGS],
)
def test_every_bad_config_is_one_line_naming_its_key(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    role: str,
    config: object,
    key: str,
) -> None:
    """Through the command itself, as a user meets it: exit 2, one line, the key."""
    from shoal import cli
    from shoal.agent.service import Agent
    from shoal.root.service import Root

    # a config that passes would start the role: build it (its own checks) and stop
    monkeypatch.setattr("shoal.agent.main.run_agent", lambda c: bool(Agent(c)) - 1)
    monkeypatch.setattr("shoal.root.main.run_root", lambda c: bool(Root(c)) - 1)
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"\x00 not a certificate\n")
    path = tmp_path / "p2p.yaml"
    if isinstance(config, bytes):
        path.write_bytes(config)
    elif isinstance(config, str):
        path.write_text(config)
    else:
        data = json.loads(json.dumps(config).replace('"@garbage"', json.dumps(str(garbage))))
        data.setdefault("DeployConfig", {}).setdefault("mode", role)
        data.setdefault("CacheConfig", {}).setdefault("path", str(tmp_path / "cache"))
        if role == "root":
            data["DeployConfig"].setdefault("logDir", str(tmp_path / "log"))
        path.write_text(yaml.safe_dump(data))
    rc = cli.main([role, "--config", str(path), "--listen", "127.0.0.1"])
    err = capsys.readouterr().err
    assert rc == 2, f"accepted: {err}"
    assert err.count("\n") == 1 and err.startswith(f"shoal {role}: "), err
    assert key in err, err
    assert "Traceback" not in err


def test_there_are_45_bad_configs_and_more() -> None:
    assert len(BAD_CONFIGS) >= 45
