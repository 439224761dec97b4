"""Sampler micro-benchmarks: metalmem against the raw C floor and the alternatives, in one run.

Run with `make bench`; `python benchmarks/report.py benchmarks/results.json` prints the ratios.
Nothing here asserts a timing: the numbers are reported, not tested.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
from typing import Any, NamedTuple

import psutil
import pytest

import metalmem

from .conftest import open_fds

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/meminfo"), reason="Linux /proc")


@pytest.fixture(scope="module")
def sampler() -> Any:
    with metalmem.Sampler() as s:
        yield s


def test_system_metalmem(benchmark: Any, sampler: metalmem.Sampler) -> None:
    benchmark.group = "system"
    m = benchmark(sampler.system)
    assert m.total is not None


def test_system_floor_c_pread(benchmark: Any, floor: Any) -> None:
    benchmark.group = "system"
    paths = ["/proc/meminfo"]
    if os.path.exists("/proc/pressure/memory"):
        paths.append("/proc/pressure/memory")
    fds = open_fds(paths)
    psi_fd = fds[1] if len(fds) > 1 else -1
    try:
        assert benchmark(floor.lib.floor_system, fds[0], psi_fd) == 0
    finally:
        for fd in fds:
            os.close(fd)


def test_system_psutil(benchmark: Any) -> None:
    benchmark.group = "system"
    benchmark(psutil.virtual_memory)


def _python_meminfo() -> dict[str, int]:
    out = {}
    with open("/proc/meminfo", "rb") as f:
        for line in f:
            key, _, rest = line.partition(b":")
            out[key.decode()] = int(rest.split()[0]) * 1024
    return out


def test_system_pure_python(benchmark: Any) -> None:
    benchmark.group = "system"
    assert "MemAvailable" in benchmark(_python_meminfo)


def test_system_subprocess(benchmark: Any) -> None:
    benchmark.group = "system"
    benchmark.pedantic(
        lambda: subprocess.run(["cat", "/proc/meminfo"], capture_output=True, check=True),
        rounds=30,
        iterations=1,
    )


@pytest.mark.parametrize("n", [1, 16, 64, 256])
def test_processes_metalmem(
    benchmark: Any, sampler: metalmem.Sampler, children: list[int], n: int
) -> None:
    benchmark.group = f"processes-{n}"
    pids = children[:n]
    out = benchmark(sampler.processes, pids)
    assert all(isinstance(p, metalmem.ProcessMemory) for p in out.values())


@pytest.mark.parametrize("n", [1, 16, 64, 256])
def test_processes_floor_c_pread(benchmark: Any, floor: Any, children: list[int], n: int) -> None:
    benchmark.group = f"processes-{n}"
    fds = open_fds([f"/proc/{pid}/statm" for pid in children[:n]])
    c_fds = floor.ffi.new("int[]", fds)
    try:
        assert benchmark(floor.lib.floor_statm, c_fds, n) == 0
    finally:
        for fd in fds:
            os.close(fd)


@pytest.mark.parametrize("n", [1, 16, 64, 256])
def test_processes_psutil_fresh(benchmark: Any, children: list[int], n: int) -> None:
    benchmark.group = f"processes-{n}"
    pids = children[:n]
    benchmark(lambda: [psutil.Process(p).memory_info() for p in pids])


@pytest.mark.parametrize("n", [1, 16, 64, 256])
def test_processes_psutil_reused(benchmark: Any, children: list[int], n: int) -> None:
    benchmark.group = f"processes-{n}"
    procs = [psutil.Process(p) for p in children[:n]]
    benchmark(lambda: [p.memory_info() for p in procs])


@pytest.mark.parametrize("n", [1, 16, 64])
def test_processes_ps_subprocess(benchmark: Any, children: list[int], n: int) -> None:
    benchmark.group = f"processes-{n}"
    pids = children[:n]

    def ps_each() -> None:
        for p in pids:
            subprocess.run(["ps", "-o", "rss=", "-p", str(p)], capture_output=True, check=True)

    benchmark.pedantic(ps_each, rounds=3 if n > 1 else 20, iterations=1)


# --- the record type is part of the cost --------------------------------------------------


class _NT(NamedTuple):
    a: int | None
    b: int | None
    c: int | None
    d: int | None
    e: int | None
    f: int | None
    g: int | None
    h: int | None
    i: int | None
    j: int | None
    k: object
    l: object  # noqa: E741
    m: int | None
    n: int | None
    o: str
    p: float
    q: float | None
    r: bool


@dataclasses.dataclass(frozen=True, slots=True)
class _DC:
    a: int | None
    b: int | None
    c: int | None
    d: int | None
    e: int | None
    f: int | None
    g: int | None
    h: int | None
    i: int | None
    j: int | None
    k: object
    l: object  # noqa: E741
    m: int | None
    n: int | None
    o: str
    p: float
    q: float | None
    r: bool


_ARGS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, None, None, 13, 14, "host", 1.0, 2.0, False)


def test_record_namedtuple(benchmark: Any) -> None:
    benchmark.group = "record-18-fields"
    benchmark(_NT, *_ARGS)


def test_record_frozen_dataclass(benchmark: Any) -> None:
    benchmark.group = "record-18-fields"
    benchmark(_DC, *_ARGS)
