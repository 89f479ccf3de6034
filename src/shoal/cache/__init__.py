"""The piece store on disk, its index, and byte-capacity eviction."""
