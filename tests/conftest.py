"""Fixtures shared by the tests that sample the live host or start children."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterator

import pytest

# `make test-darwin-shim` (tests/darwin_shim/build.py) sets this to the directory of the shim
# build of csrc/darwin.c: it becomes metalmem._native before metalmem is first imported, so
# the Sampler runs on the darwin backend here. Nothing else changes.
if _shim_dir := os.environ.get("METALMEM_DARWIN_SHIM"):
    if "metalmem" in sys.modules:
        raise RuntimeError("METALMEM_DARWIN_SHIM is set but metalmem was imported before it")
    sys.path.insert(0, _shim_dir)
    sys.modules["metalmem._native"] = importlib.import_module("_metalmem_darwin_shim")

import metalmem

from .helpers import Children

# tests/e2e/ runs real llama-server processes: `make e2e` builds the server and sets this.
# `make test` leaves the directory out, so its time budget holds on a fresh machine.
collect_ignore = [] if os.environ.get("METALMEM_E2E") else ["e2e"]


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
