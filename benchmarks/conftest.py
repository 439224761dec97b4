"""Shared benchmark fixtures: the raw C floor (compiled here) and live child processes."""

from __future__ import annotations

import importlib
import os
import pathlib
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

HERE = pathlib.Path(__file__).resolve().parent


@pytest.fixture(scope="session")
def floor() -> Any:
    """A cffi API-mode module whose functions only pread, built by the suite itself."""
    from cffi import FFI

    build = pathlib.Path(tempfile.mkdtemp(prefix="metalmem-floor-"))
    ffi = FFI()
    ffi.cdef("int floor_system(int, int); int floor_statm(const int *, size_t);")
    ffi.set_source("_mm_floor", (HERE / "floor.c").read_text(), extra_compile_args=["-O2"])
    ffi.compile(tmpdir=str(build), verbose=False)
    sys.path.insert(0, str(build))
    try:
        return importlib.import_module("_mm_floor")
    finally:
        sys.path.remove(str(build))


@pytest.fixture(scope="session")
def children() -> Iterator[list[int]]:
    """256 idle child processes of our own, reaped at the end."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
        )
        for _ in range(256)
    ]
    try:
        yield [p.pid for p in procs]
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()


def open_fds(paths: list[str]) -> list[int]:
    return [os.open(p, os.O_RDONLY | os.O_CLOEXEC) for p in paths]
