"""The audit log: the reference system's line format, and a file that cannot fill a disk."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

from shoal.config import DeployConfig
from shoal.errors import ConfigInvalidError
from shoal.observability import AuditLog
from shoal.observability.audit import HTTP_PREAD

AUDIT_RE = re.compile(
    r"^\d{4}/\d{2}/\d{2} \d{2}:\d{2}:\d{2}\|AUDIT\|th=[0-9A-F]{16}\|http:pread"
    r"\[pathname=/https://reg\.io/v2/a/blobs/sha256:x\]\[offset=128\]\[size=(-?\d+)\]"
    r"\[latency=(\d+)\]$"
)


def test_audit_line_has_the_reference_form() -> None:
    sink = io.StringIO()
    log = AuditLog(sink)
    with log.timed(HTTP_PREAD, "/https://reg.io/v2/a/blobs/sha256:x", 128) as rec:
        rec.size = 65536
    with (
        pytest.raises(ValueError, match="boom"),
        log.timed(HTTP_PREAD, "/https://reg.io/v2/a/blobs/sha256:x", 128),
    ):
        raise ValueError("boom")
    lines = sink.getvalue().splitlines()
    assert len(lines) == 2
    ok, failed = (AUDIT_RE.match(line) for line in lines)
    assert ok is not None
    assert ok.group(1) == "65536"
    assert failed is not None
    assert int(failed.group(1)) < 0


def test_disabled_audit_writes_nothing() -> None:
    log = AuditLog(None)
    assert not log.enabled
    log.record(HTTP_PREAD, "/x", 0, 1, 0.1)


def test_the_file_rotates_by_size_and_keeps_the_configured_backups(tmp_path: Path) -> None:
    deploy = DeployConfig(
        log_audit=True,
        log_audit_mode="file",
        log_dir=str(tmp_path / "log"),
        log_audit_max_size=4096,
        log_audit_backups=2,
    )
    log = AuditLog.from_config(deploy)
    try:
        for i in range(200):  # about 25 KB of lines
            log.record(HTTP_PREAD, f"/https://reg.io/v2/a/blobs/sha256:{i:064x}", i, 1, 0.001)
    finally:
        log.close()
    files = sorted(p.name for p in (tmp_path / "log").iterdir())
    assert files == ["audit.log", "audit.log.1", "audit.log.2"]
    for name in files:
        path = tmp_path / "log" / name
        assert path.stat().st_size <= 4096
        lines = path.read_text().splitlines()
        assert lines and all("|AUDIT|" in line for line in lines)
    newest = (tmp_path / "log" / "audit.log").read_text().splitlines()[-1]
    assert "[offset=199]" in newest  # nothing lost at the head: the last line is in


def test_an_unwritable_log_dir_is_one_error_naming_the_key(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    deploy = DeployConfig(log_audit=True, log_audit_mode="file", log_dir=str(blocker / "log"))
    with pytest.raises(ConfigInvalidError, match=r"DeployConfig\.logDir: cannot write .*a-file"):
        AuditLog.from_config(deploy)
