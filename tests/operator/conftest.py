"""Fixtures for the operator's end-to-end tests; the machinery lives in harness.py."""

from harness import k, kmock_options  # noqa: F401  (fixtures, shared with the image test)
