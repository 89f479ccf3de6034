"""The agent's OCI registry mirror and its upstream client."""
