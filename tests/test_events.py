"""PressureEvents: a selectable fd that the OS's pressure signal makes readable.

Linux: real PSI triggers on a real cgroup whose child process really thrashes
(reference/python-ecosystem.md §6.3 is the recipe, measured on this machine). The macOS
dispatch source is exercised in test_macos_live.py.
"""

from __future__ import annotations

import os
import pathlib
import selectors
import subprocess
import sys
import time

import pytest

import metalmem
from metalmem import Level, PressureEvents, Sampler

from . import cgroups

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PSI is Linux's")

LIMIT = 64 << 20
# The child's anonymous memory: close enough to the limit that the file it reads cannot stay
# cached, far enough that it is not OOM-killed (56 of 64 MiB worked, §6.3).
HOLD = 56 << 20
FILE_SIZE = 256 << 20
TEST_BUDGET = 30.0

# Holds HOLD bytes of touched anonymous memory, then reads the file over and over, dropping it
# from the cache before each pass, so every read refaults under the limit: a memory stall.
THRASH = """
import os, sys, time
path, hold, budget = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
sys.stdin.readline()  # go: the parent has moved us into the cgroup
anon = bytearray(hold)
for i in range(0, hold, 4096):
    anon[i] = 1
buf = bytearray(1 << 20)
fd = os.open(path, os.O_RDONLY)
deadline = time.monotonic() + budget
while time.monotonic() < deadline:
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.lseek(fd, 0, os.SEEK_SET)
    with os.fdopen(os.dup(fd), "rb", buffering=0) as f:
        while f.readinto(buf):
            pass
"""


def _tasks() -> int:
    return len(os.listdir("/proc/self/task"))


def _fds() -> set[int]:
    return {int(fd) for fd in os.listdir("/proc/self/fd")}


def _open_or_skip(
    sampler: Sampler, *, some_ms: int = 150, full_ms: int = 50, window_s: float = 2.0
) -> PressureEvents:
    try:
        return sampler.events(some_ms=some_ms, full_ms=full_ms, window_s=window_s)
    except (OSError, metalmem.Unsupported) as exc:
        pytest.skip(f"the kernel refused a PSI trigger here: {exc}")


def _wait_level(ev: PressureEvents, timeout: float) -> Level | None:
    """Wait on the fd with selectors until a level arrives or the deadline passes."""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(ev, selectors.EVENT_READ)
        while (left := deadline - time.monotonic()) > 0:
            if sel.select(left) and (level := ev.read()) is not None:
                return level
    return None


def test_pressure_events_close_releases_fds_and_thread() -> None:
    before_fds, before_tasks = _fds(), _tasks()
    with Sampler() as s:
        ev = _open_or_skip(s, window_s=2.0)
        fd = ev.fileno()
        assert fd in _fds()
        assert _tasks() == before_tasks + 1  # the notifier thread
        ev.close()
        ev.close()  # idempotent
        with pytest.raises(ValueError):
            ev.fileno()
        with pytest.raises(ValueError):
            ev.read()
    assert _fds() == before_fds
    assert _tasks() == before_tasks


def test_pressure_events_refuse_thresholds_longer_than_the_window() -> None:
    with Sampler() as s, pytest.raises(ValueError):
        s.events(some_ms=3000, window_s=2.0)


def test_pressure_events_stay_quiet_in_an_idle_cgroup() -> None:
    reason = cgroups.skip_reason()
    if reason:
        pytest.skip(reason)
    with (
        cgroups.memory_cgroup(LIMIT) as cg,
        Sampler(scope=cg.scope) as s,
        _open_or_skip(s, some_ms=50, full_ms=50, window_s=2.0) as ev,
    ):
        # Two windows with no task in the group: no stall, so no notification.
        assert _wait_level(ev, 4.5) is None
        assert ev.read() is None


def test_cgroup_helper_charges_a_popen_child_and_cleans_up() -> None:
    # The helper these tests (and the scope and eviction tests) stand on: a child started by
    # popen() is charged to the group from its first page, and nothing is left afterwards.
    reason = cgroups.skip_reason(psi=False)
    if reason:
        pytest.skip(reason)
    hold = 32 << 20
    with cgroups.memory_cgroup(LIMIT) as cg:
        child = cg.popen(
            [sys.executable, "-c",
             f"import time; b = bytearray(b'x') * {hold}; print(1, flush=True); time.sleep(60)"],
            stdout=subprocess.PIPE,
        )  # fmt: skip
        assert child.stdout is not None and child.stdout.readline() == b"1\n"
        assert cg.pids() == {child.pid}
        with Sampler(scope=cg.scope) as s:
            m = s.system()
        assert m.total == LIMIT and m.free is not None and m.free <= LIMIT - hold
        assert cg.oom_kills() == 0
        dirs = [d for d in (cg.v1, cg.v2) if d is not None]
    assert child.returncode == -9  # killed and reaped by the helper
    assert not any(d.exists() for d in dirs)


@pytest.mark.root
@pytest.mark.slow
def test_pressure_events_fire_when_a_child_thrashes_in_a_limited_cgroup(
    tmp_path: pathlib.Path,
) -> None:
    reason = cgroups.skip_reason()
    if reason:
        pytest.skip(reason)
    data = tmp_path / "thrash.bin"
    with data.open("wb") as f:
        block = b"\1" * (1 << 20)
        for _ in range(FILE_SIZE >> 20):
            f.write(block)
    started = time.monotonic()
    with cgroups.memory_cgroup(LIMIT) as cg:
        child = subprocess.Popen(
            [sys.executable, "-c", THRASH, str(data), str(HOLD), str(TEST_BUDGET)],
            stdin=subprocess.PIPE,
        )
        cg.add(child)
        with Sampler(scope=cg.scope) as s, _open_or_skip(s, window_s=2.0) as ev:
            assert child.stdin is not None
            child.stdin.write(b"go\n")
            child.stdin.close()
            level = _wait_level(ev, TEST_BUDGET - (time.monotonic() - started))
            stalled = s.system().psi
        oom_kills = cg.oom_kills()
        rc = child.poll()
    assert level in (Level.WARNING, Level.CRITICAL), (
        f"no pressure event within {TEST_BUDGET} s (child rc={rc}, oom kills={oom_kills}, "
        f"scope psi={stalled})"
    )
    # The event came from this group's own PSI, which saw the stall.
    assert stalled is not None and stalled.some_total is not None and stalled.some_total > 0
    assert oom_kills == 0 and rc is None  # it thrashed, it did not die
