"""Mutating admission webhook and the pull-secret controller."""
