"""Run by every Python process the test suite starts (its ``PYTHONPATH`` holds this
directory): the default-store guard of ``default_store.py``."""

import os

if os.environ.get("SHOAL_TEST_GUARDED_ROOT") and os.environ.get("SHOAL_TEST_GUARD_MARKS"):
    from default_store import install  # type: ignore[import-not-found]

    install(os.environ["SHOAL_TEST_GUARDED_ROOT"], os.environ["SHOAL_TEST_GUARD_MARKS"])
