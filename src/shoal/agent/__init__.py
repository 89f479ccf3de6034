"""Composition root of the node agent."""
