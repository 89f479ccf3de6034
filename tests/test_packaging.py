"""What a packager relies on: one version, runtime dependencies that are what the roles
import, a lock the image installs from, and the files a release carries."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

import shoal

TOP = Path(__file__).parent.parent
PYPROJECT = tomllib.loads((TOP / "pyproject.toml").read_text())
#: what only the extras bring, and what no role may import
HEAVY = ("matplotlib", "numpy", "PIL", "fontTools", "kubernetes_asyncio", "uvloop", "jsonpatch")


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_the_version_is_written_once_and_everything_agrees() -> None:
    assert PYPROJECT["project"]["dynamic"] == ["version"]
    assert "version" not in PYPROJECT["project"]
    chart = yaml.safe_load((TOP / "deploy/helm/shoal/Chart.yaml").read_text())
    assert chart["appVersion"] == shoal.__version__
    first = re.search(r"^## (\S+)", (TOP / "CHANGELOG.md").read_text(), re.M)
    assert first is not None and first.group(1) == shoal.__version__


def test_the_release_files_are_there() -> None:
    license_text = (TOP / "LICENSE").read_text()
    assert "Apache License" in license_text and "Version 2.0" in license_text
    assert PYPROJECT["project"]["license"] == "Apache-2.0"
    for name in ("CHANGELOG.md", "SECURITY.md", "CONTRIBUTING.md"):
        assert (TOP / name).stat().st_size > 500, name


def test_the_lock_pins_exactly_the_runtime_with_hashes() -> None:
    lock = (TOP / "requirements.lock").read_text()
    pinned = {m.group(1).lower() for m in re.finditer(r"^([A-Za-z0-9_.-]+)==", lock, re.M)}
    runtime = {_name(r) for r in PYPROJECT["project"]["dependencies"]}
    assert runtime <= pinned
    extras = {_name(r) for v in PYPROJECT["project"]["optional-dependencies"].values() for r in v}
    assert not (extras - runtime - {"shoal"}) & pinned, "an extra leaked into the lock"
    assert all("--hash=sha256:" in block for block in lock.split("==")[1:])
    dockerfile = (TOP / "Dockerfile").read_text()
    assert "--require-hashes" in dockerfile and "-r requirements.lock" in dockerfile
    assert re.search(r"^USER 65532", dockerfile, re.M)


def test_the_roles_start_without_the_extras(tmp_path: Path) -> None:
    """Every role's composition, built with the heavy packages made unimportable."""
    code = f"""
import sys
for name in {HEAVY!r}:
    sys.modules[name] = None  # import raises ModuleNotFoundError
import asyncio
from shoal.agent.service import Agent
from shoal.root.service import Root
from shoal.config import parse_config
from shoal.webhook.server import WebhookServer
from shoal.webhook.config import WebhookConfig
import shoal.webhook.main, shoal.webhook.nodesetup, shoal.registry.pull, shoal.cli
store = sys.argv[1]
Agent(parse_config({{"CacheConfig": {{"path": store + "/a"}}}}))
Root(parse_config({{"DeployConfig": {{"mode": "root"}}, "CacheConfig": {{"path": store + "/r"}},
                    "P2PConfig": {{"secret": "0123456789abcdef0"}}}}))
WebhookServer(WebhookConfig())
loaded = sorted({{m.split(".")[0] for m in sys.modules if sys.modules[m] is not None}})
print(" ".join(loaded))
"""
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert not set(done.stdout.split()) & set(HEAVY)
