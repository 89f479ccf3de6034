"""Real parts for demos, benchmarks and tests: an origin registry process and images.

Nothing here runs in production; it starts Debian's ``docker-registry`` and builds
images of incompressible layers so that every figure comes from real bytes.
"""
