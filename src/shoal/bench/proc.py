"""Running the helper commands (``ip``, ``tc``, clients), inside a namespace or not.

Setup commands are synchronous on purpose: they take milliseconds, run before and after
the timed part, and the cleanup path must work even when the event loop is gone (Ctrl-C
during ``asyncio.run``). Timed clients use asyncio subprocesses instead (see modes).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence

from shoal.bench.errors import CommandFailedError, ToolMissingError


def in_netns(netns: str | None, argv: Sequence[str]) -> list[str]:
    """``argv`` run inside ``netns`` by ``ip netns exec`` (which execs: same PID)."""
    if netns is None:
        return list(argv)
    return ["ip", "netns", "exec", netns, *argv]


def run(argv: Sequence[str], *, check: bool = True, timeout: float = 30.0) -> str:
    """Run a short command and return its stdout; raise with its stderr when it fails."""
    try:
        done = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except FileNotFoundError as exc:
        raise ToolMissingError(f"{argv[0]} not found") from exc
    except subprocess.TimeoutExpired as exc:
        raise CommandFailedError(f"{' '.join(argv)}: no answer in {timeout}s") from exc
    if check and done.returncode != 0:
        err = (done.stderr or done.stdout).strip().splitlines()
        last = err[-1] if err else f"exit {done.returncode}"
        raise CommandFailedError(f"{' '.join(argv)}: {last}")
    return done.stdout


def require(*binaries: str) -> None:
    """Refuse early, naming the Debian package, when a binary is missing."""
    for binary in binaries:
        if shutil.which(binary) is None:
            raise ToolMissingError(
                f"{binary} not found: install it (scripts/install-system-deps.sh)"
            )
