"""The multi-host benchmark harness (network namespaces, tc shaping)."""
