"""No test may create shoal's default store (``/dadi-p2p``): an agent given no
``CacheConfig.path`` would fill the machine's disk there.

The guard refuses the creation at its source, in every Python process of the test
run: the test runner itself (``install`` from ``tests/conftest.py``) and each Python
program it starts (``sitecustomize.py`` next to this file, on their ``PYTHONPATH``).
A refused ``mkdir`` raises ``PermissionError`` and leaves a mark naming the process,
so the test that did it fails by name, whatever the code under test did with the
error. Another program on the machine creating ``/dadi-p2p`` (another checkout's
test run, say) is none of this run's business and fails nothing.
"""

from __future__ import annotations

import errno
import itertools
import os
import sys
from pathlib import Path
from typing import Any

#: the directory under which nothing may be created (the parent of CacheConfig.path)
ROOT_ENV = "SHOAL_TEST_GUARDED_ROOT"
#: where refused attempts leave their marks, one file each
MARKS_ENV = "SHOAL_TEST_GUARD_MARKS"

_count = itertools.count()


def install(root: str, marks: str) -> None:
    """Refuse every ``os.mkdir`` (hence ``os.makedirs``, ``Path.mkdir``) under ``root``."""
    real_mkdir = os.mkdir
    if getattr(real_mkdir, "_shoal_guard", False):
        return
    guarded = os.path.abspath(root)

    def mkdir(path: Any, mode: int = 0o777, *, dir_fd: int | None = None) -> None:
        if dir_fd is None:
            target = os.path.abspath(os.fsdecode(path))
            if target == guarded or target.startswith(guarded + os.sep):
                mark = Path(marks) / f"{os.getpid()}-{next(_count)}"
                mark.write_text(f"{target}\n{' '.join(sys.argv)}\n")
                raise PermissionError(
                    errno.EACCES, "a test may not create shoal's default store", target
                )
        real_mkdir(path, mode, dir_fd=dir_fd)

    mkdir._shoal_guard = True  # type: ignore[attr-defined]
    os.mkdir = mkdir


def refused(marks: str) -> list[str]:
    """What the refused attempts were, one line each: path, then the process's argv."""
    return [" by ".join(p.read_text().split("\n")[:2]) for p in sorted(Path(marks).iterdir())]
