"""Sampler micro-benchmarks: metalmem against the raw C floor and the alternatives, in one run.

Run with `make bench`; `python benchmarks/report.py benchmarks/results.json` prints the ratios.
Nothing here asserts a timing: the numbers are reported, not tested. The raw C floor and the
pure-Python parser read Linux /proc and skip elsewhere; the rest runs on macOS too (there the
subprocess snapshot and the LLMKube method use the real `vm_stat` and `sysctl hw.memsize`).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
from collections.abc import Sequence
from typing import Any, NamedTuple

import psutil
import pytest

import metalmem

from .common import QUICK
from .conftest import IS_LINUX, open_fds

linux_only = pytest.mark.skipif(not IS_LINUX, reason="reads Linux /proc directly")
# One subprocess snapshot of host memory: what a script (or the Go agent) runs.
SNAPSHOT = ["cat", "/proc/meminfo"] if IS_LINUX else ["vm_stat"]


@pytest.fixture(scope="module")
def sampler() -> Any:
    with metalmem.Sampler() as s:
        yield s


def test_system_metalmem(benchmark: Any, sampler: metalmem.Sampler) -> None:
    benchmark.group = "system"
    m = benchmark(sampler.system)
    assert m.total is not None


def test_system_native_only(benchmark: Any, sampler: metalmem.Sampler) -> None:
    """The C call alone, no record built: splits system() into its C and Python parts."""
    from metalmem.sampler import _mm_system

    benchmark.group = "system"
    args = (sampler._handle, sampler._sys, sampler._err)
    assert benchmark(_mm_system, *args) == 0


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


@linux_only
def test_system_pure_python(benchmark: Any) -> None:
    benchmark.group = "system"
    assert "MemAvailable" in benchmark(_python_meminfo)


def test_system_subprocess(benchmark: Any) -> None:
    benchmark.group = "system"
    benchmark.pedantic(
        lambda: subprocess.run(SNAPSHOT, capture_output=True, check=True),
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


# --- a full host + 4-target sample: metalmem vs the LLMKube Go agent's method --------------
#
# The Go agent (reference/peers.md b1) runs, every 10 s: `sysctl -n hw.memsize`, `vm_stat`
# twice, and `ps -o rss= -p PID` per managed process, each a fork/exec. On macOS the same
# commands run here; on Linux `sysctl -n` reads one memory key and `cat /proc/meminfo` stands
# for each `vm_stat`. Two emulations: subprocess.run (what a Python script would do) and a
# bare posix_spawn + pipe + waitpid, which is about what Go's os/exec does; the goal's ratio
# uses the faster of the two, so Python's own subprocess overhead is not counted against it.

HOST4 = 4


def llmkube_commands(pids: Sequence[int]) -> list[list[str]]:
    if IS_LINUX:
        head = [["sysctl", "-n", "vm.min_free_kbytes"], SNAPSHOT, SNAPSHOT]
    else:
        head = [["sysctl", "-n", "hw.memsize"], ["vm_stat"], ["vm_stat"]]
    return head + [["ps", "-o", "rss=", "-p", str(p)] for p in pids]


def _spawn_read(path: str, argv: list[str]) -> bytes:
    """Run argv with its stdout on a pipe and read it to EOF: fork/exec, no Python wrapping."""
    r, w = os.pipe()
    try:
        pid = os.posix_spawn(
            path,
            argv,
            os.environ,
            file_actions=[(os.POSIX_SPAWN_DUP2, w, 1), (os.POSIX_SPAWN_CLOSE, r)],
        )
    finally:
        os.close(w)
    chunks = []
    with os.fdopen(r, "rb", buffering=0) as f:
        while chunk := f.read(65536):
            chunks.append(chunk)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{argv} failed")
    return b"".join(chunks)


def test_host4_metalmem(benchmark: Any, sampler: metalmem.Sampler, children: list[int]) -> None:
    benchmark.group = "host+4"
    pids = children[:HOST4]

    def sample() -> int:
        m = sampler.system()
        procs = sampler.processes(pids)
        return (m.available or 0) + sum(
            p.rss or 0 for p in procs.values() if isinstance(p, metalmem.ProcessMemory)
        )

    assert benchmark(sample) > 0


def test_host4_llmkube_subprocess(benchmark: Any, children: list[int]) -> None:
    benchmark.group = "host+4"
    commands = llmkube_commands(children[:HOST4])

    def sample() -> int:
        outs = [subprocess.run(c, capture_output=True, check=True).stdout for c in commands]
        return sum(int(o) for o in outs[3:])  # the agent parses each ps line as KiB

    benchmark.pedantic(sample, rounds=5 if QUICK else 20, iterations=1)


def test_host4_llmkube_posix_spawn(benchmark: Any, children: list[int]) -> None:
    benchmark.group = "host+4"
    commands = [(shutil.which(c[0]) or c[0], c) for c in llmkube_commands(children[:HOST4])]

    def sample() -> int:
        outs = [_spawn_read(path, argv) for path, argv in commands]
        return sum(int(o) for o in outs[3:])

    assert sample() > 0
    benchmark.pedantic(sample, rounds=5 if QUICK else 20, iterations=1)


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
