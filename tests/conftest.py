"""Fixtures shared by the tests that sample the live host or start children."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import metalmem

from .helpers import Children


@pytest.fixture
def sampler() -> Iterator[metalmem.Sampler]:
    """A Sampler of this host, closed after the test."""
    with metalmem.Sampler() as s:
        yield s


@pytest.fixture
def children() -> Iterator[Children]:
    """Spawns the test's own children and reaps every one of them, by pid, at the end."""
    with Children() as c:
        yield c
