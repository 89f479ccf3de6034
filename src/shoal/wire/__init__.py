"""The peer protocol: a sans-IO codec (bytes in, events out)."""
