"""The discrete-event simulator that drives the real ``shoal.swarm`` code."""
