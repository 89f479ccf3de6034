"""The benchmark's own failure states, all ``ShoalError`` so the CLI prints one line."""

from __future__ import annotations

from shoal.errors import ShoalError


class BenchError(ShoalError):
    """The benchmark could not build its hosts, run a mode or write its report."""


class NotRootError(BenchError):
    """Network namespaces and tc need root; without it nothing can be measured."""


class ToolMissingError(BenchError):
    """A binary a mode needs (skopeo, aria2c, ...) is not installed."""


class CommandFailedError(BenchError):
    """A helper command (ip, tc, a client) exited non-zero."""
