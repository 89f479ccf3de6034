from __future__ import annotations

from pathlib import Path

import pytest

from shoal.cli import main
from shoal.errors import ConfigInvalidError
from shoal.webhook.config import load_webhook_config, parse_webhook_config

FULL = """
ServerConfig:
  listen: "::"
  port: 9443
  tlsCertFile: /tls/tls.crt
  tlsKeyFile: /tls/tls.key
AccelerateConfig:
  labelKey: example.com/p2p
  labelValue: "on"
  registries: ["*.cr.aliyuncs.com", docker.io]
  p2pPort: 30001
SecretConfig:
  enable: false
  syncTimeout: 2.5
"""


def test_full_file(tmp_path: Path) -> None:
    path = tmp_path / "webhook.yaml"
    path.write_text(FULL)
    cfg = load_webhook_config(path)
    assert cfg.server.port == 9443 and cfg.server.listen == "::"
    assert cfg.accelerate.registries == ("*.cr.aliyuncs.com", "docker.io")
    assert cfg.accelerate.clone_name("s") == "acr-credential-s-p2p"
    assert cfg.secrets.enable is False and cfg.secrets.sync_timeout == 2.5


def test_defaults_are_the_reference_names() -> None:
    cfg = parse_webhook_config(None)
    assert cfg.accelerate.label_key == "k8s.aliyun.com/image-accelerate-mode"
    assert cfg.accelerate.config_annotation == "k8s.aliyun.com/p2p-config"
    assert (cfg.accelerate.label_value, cfg.accelerate.p2p_port) == ("p2p", 65001)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"ServerConfig": {"prot": 1}}, "webhook config: unknown key ServerConfig.prot"),
        ({"Server": {}}, "webhook config: unknown key Server"),
        ({"ServerConfig": {"port": 70000}}, "webhook config: ServerConfig.port:"),
        ({"ServerConfig": {"listen": "example.com"}}, "listen address is not an IP address"),
        ({"AccelerateConfig": {"p2pPort": 0}}, "p2pPort must not be 0"),
        ({"SecretConfig": {"syncTimeout": 0}}, "SecretConfig.syncTimeout"),
    ],
)
def test_refused_in_one_line(data: object, message: str) -> None:
    with pytest.raises(ConfigInvalidError) as info:
        parse_webhook_config(data)
    assert message in info.value.message
    assert "\n" not in info.value.message


def test_cli_says_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "webhook.yaml"
    path.write_text("AccelerateConfig:\n  lableKey: x\n")
    assert main(["webhook", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "shoal webhook: webhook config: unknown key AccelerateConfig.lableKey"
