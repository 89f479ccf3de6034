"""``shoal bench``: not built yet."""

from __future__ import annotations

import argparse

from shoal.errors import UnsupportedError


def run_bench(args: argparse.Namespace) -> int:
    raise UnsupportedError("not yet: this subcommand comes with a later release")
