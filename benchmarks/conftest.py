"""Shared benchmark fixtures: the raw C floor (compiled here), live child processes, and the
targets, watchdogs and collectors built over them.

Environment (benchmarks/common.py; docs/performance.md): ``METALMEM_BENCH_QUICK=1`` shortens
every part; ``METALMEM_BENCH_SCALE_MAX`` caps the scale sweep (default 1024 targets);
``METALMEM_BENCH_SKIP=scale`` skips it.
"""

from __future__ import annotations

import importlib
import os
import pathlib
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

import metalmem
from metalmem.eviction import EvictionMode, EvictionPolicy, Planner
from metalmem.metrics import AgentStats, MetalmemCollector, SampleDurations
from metalmem.pressure import Classifier, PressurePolicy
from metalmem.targets import Priority, Target
from metalmem.watchdog import Watchdog

from .common import QUICK, QUIET

HERE = pathlib.Path(__file__).resolve().parent
IS_LINUX = sys.platform.startswith("linux")

PRIORITIES = tuple(Priority)


@pytest.fixture(scope="session")
def floor() -> Iterator[Any]:
    """A cffi API-mode module whose functions only pread, built by the suite itself (in a
    temporary directory, removed at the end: the loaded library needs no file)."""
    if not IS_LINUX:
        pytest.skip("the raw C floor preads Linux /proc files")
    from cffi import FFI

    build = pathlib.Path(tempfile.mkdtemp(prefix="metalmem-floor-"))
    try:
        ffi = FFI()
        ffi.cdef("int floor_system(int, int); int floor_statm(const int *, size_t);")
        ffi.set_source("_mm_floor", (HERE / "floor.c").read_text(), extra_compile_args=["-O2"])
        ffi.compile(tmpdir=str(build), verbose=False)
        sys.path.insert(0, str(build))
        try:
            module = importlib.import_module("_mm_floor")
        finally:
            sys.path.remove(str(build))
        yield module
    finally:
        shutil.rmtree(build, ignore_errors=True)


def _spawn(argv: Sequence[str], n: int) -> Iterator[list[int]]:
    procs = [
        subprocess.Popen(list(argv), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
        for _ in range(n)
    ]
    try:
        yield [p.pid for p in procs]
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()


@pytest.fixture(scope="session")
def children() -> Iterator[list[int]]:
    """256 idle Python child processes of our own (a realistic /proc/PID size), reaped at
    the end."""
    yield from _spawn([sys.executable, "-c", "import sys; sys.stdin.read()"], 256)


@pytest.fixture(scope="session")
def sleepers() -> Iterator[list[int]]:
    """Up to 1024 tiny children (``sleep``): 1024 Python children would not fit 2 cores'
    patience, and a target's sampling cost does not depend on what the process runs."""
    n = scale_sizes()[-1]
    sleep = shutil.which("sleep") or "/bin/sleep"
    yield from _spawn([sleep, "3600"], n)


def scale_sizes() -> list[int]:
    """1, 2, 4, ... up to METALMEM_BENCH_SCALE_MAX (1024; 256 in quick mode)."""
    top = int(os.environ.get("METALMEM_BENCH_SCALE_MAX", "256" if QUICK else "1024"))
    sizes = [1]
    while sizes[-1] * 2 <= top:
        sizes.append(sizes[-1] * 2)
    return sizes


def open_fds(paths: list[str]) -> list[int]:
    return [os.open(p, os.O_RDONLY | os.O_CLOEXEC) for p in paths]


def make_targets(sampler: metalmem.Sampler, pids: Sequence[int]) -> list[Target]:
    """Real :class:`Target` records for our children: keys ``bench/tN`` (a namespace, as
    Kubernetes-mapped targets have), priorities cycling, identity from a sample."""
    samples = sampler.processes(pids)
    out = []
    for i, pid in enumerate(pids):
        sample = samples[pid]
        assert isinstance(sample, metalmem.ProcessMemory) and sample.start_time is not None
        out.append(Target(f"bench/t{i}", pid, sample.start_time, PRIORITIES[i % 5]))
    return out


def critical_policy() -> PressurePolicy:
    """Thresholds any real host is under (available below 99.9 % of total): CRITICAL, hard."""
    return PressurePolicy(
        warning_available=0.9995, critical_available=0.999, margin=0.0001, soft_grace=0.0, **QUIET
    )


def enforce_policy() -> EvictionPolicy:
    """A planner that ranks everything and picks victims (no guard, no pacing)."""
    return EvictionPolicy(
        mode=EvictionMode.ENFORCE, min_managed_share=0.0, floor=1, cooldown=0.0, min_reclaim=0
    )


class Loop:
    """A watchdog (ticked by the benchmark, never started) and the collector over its state,
    wired as the agent wires them (SampleDurations fed by the watchdog's tick)."""

    def __init__(
        self, sampler: metalmem.Sampler, targets: Sequence[Target], *, critical: bool
    ) -> None:
        pressure = critical_policy() if critical else PressurePolicy(**QUIET)
        # Dry-run under CRITICAL: the planner ranks every tick, no signal is ever sent.
        eviction = EvictionPolicy(
            mode=EvictionMode.DRY_RUN if critical else EvictionMode.OBSERVE,
            min_managed_share=0.0,
            cooldown=0.0,
            min_reclaim=0,
        )
        self.durations = SampleDurations()
        self.dog = Watchdog(
            sampler,
            Classifier(pressure, interval=1.0),
            list(targets),
            interval=1.0,
            planner=Planner(eviction, pressure),
            durations=self.durations,
        )
        self.collector = MetalmemCollector(
            lambda: self.dog.state,
            stats=AgentStats(),
            durations=self.durations,
            version=metalmem.__version__,
            platform=sys.platform,
        )
        self.ticks: list[float] = []  # the watchdog's own State.sample_duration per tick
        self.collects: list[float] = []

    def full_tick(self) -> int:
        """One tick (sample, assess, plan, publish) and one scrape's body over its State, as
        the agent's /metrics writes it (families, text, its own process metrics); returns
        the body's size so nothing is optimised away. Keeps the split of each."""
        state = self.dog.tick()
        t0 = time.perf_counter()
        size = len(self.collector.exposition())
        self.collects.append(time.perf_counter() - t0)
        self.ticks.append(state.sample_duration)
        return size


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    """Room for the children's pipes and the sampler's kept-open fds (macOS starts at 256
    descriptors); quick mode: fewer, shorter rounds (before pytest-benchmark reads them)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 8192 if hard == resource.RLIM_INFINITY else min(hard, 8192)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    if QUICK and hasattr(config.option, "benchmark_max_time"):
        config.option.benchmark_max_time = 0.1
        config.option.benchmark_min_rounds = 3
