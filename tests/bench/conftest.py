"""Skip what needs root or a missing binary, saying which, instead of failing."""

from __future__ import annotations

import os
import shutil

import pytest


def need_root_and(*binaries: str) -> pytest.MarkDecorator:
    missing = [b for b in binaries if shutil.which(b) is None]
    if os.geteuid() != 0:
        return pytest.mark.skip(reason="needs root (network namespaces and tc)")
    if missing:
        return pytest.mark.skip(reason=f"needs {', '.join(missing)} (make install)")
    return pytest.mark.netns
