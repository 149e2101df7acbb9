"""Registers the test bed's fixtures (tests/bed/fixtures.py, see tests/bed/README.md)."""

from tests.bed.fixtures import *  # noqa: F401,F403  (fixtures and the report hook)
