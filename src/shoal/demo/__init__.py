"""``shoal demo``: the whole system on one machine, for a first look."""
