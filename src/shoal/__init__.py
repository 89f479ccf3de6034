"""shoal: peer-to-peer container image distribution."""

__version__ = "0.1.0"
