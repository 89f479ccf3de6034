"""Composition root of the root role (seed and scheduler tier)."""
