"""End-to-end fixtures: real processes (tests/procs.py)."""

from tests.procs import procs  # noqa: F401  (the fixture)
