"""OCI references, digests, manifests and upstream derivation. No IO."""
