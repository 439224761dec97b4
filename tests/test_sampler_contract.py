"""The Sampler's contract on whichever backend is loaded: linux.c here, darwin.c on a Mac and
in the shim build (make test-darwin-shim runs this file on darwin.c too).

Real child processes; only what both platforms promise is asserted.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

import metalmem
from metalmem.sampler import PLATFORM


def test_dead_pid_is_no_such_process() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    with metalmem.Sampler() as s:
        result = s.processes([child.pid])[child.pid]
        assert isinstance(result, metalmem.NoSuchProcess)
        assert result.pid == child.pid
        with pytest.raises(metalmem.NoSuchProcess):
            s.process(child.pid)
    with pytest.raises(metalmem.NoSuchProcess):
        metalmem.process_memory(child.pid)


def test_a_batch_never_fails_as_a_whole() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    with metalmem.Sampler() as s:
        out = s.processes([os.getpid(), child.pid, 1, 0, -5])
    assert isinstance(out[os.getpid()], metalmem.ProcessMemory)
    # macOS: launchd is root's, and proc_pid_rusage needs the same uid or root (§3.1).
    foreign_denied = PLATFORM == "darwin" and os.geteuid() != 0
    assert isinstance(out[1], metalmem.AccessDenied if foreign_denied else metalmem.ProcessMemory)
    assert isinstance(out[child.pid], metalmem.NoSuchProcess)
    assert isinstance(out[0], metalmem.NoSuchProcess)
    assert isinstance(out[-5], metalmem.NoSuchProcess)


def test_start_time_is_stable_and_differs_for_a_new_process() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        with metalmem.Sampler() as s:
            first = s.process(child.pid).start_time
            time.sleep(0.05)
            again = s.process(child.pid).start_time
            mine = s.process(os.getpid()).start_time
        with metalmem.Sampler() as s2:
            fresh = s2.process(child.pid).start_time
        assert first == again == fresh
        assert mine is not None and first is not None and first > mine
    finally:
        child.kill()
        child.wait()


def test_a_reused_pid_slot_reports_the_new_process() -> None:
    """The sampler pins /proc/PID while it caches it; once the process is gone the next
    call must not report the dead one's numbers under a live pid's name."""
    a = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    with metalmem.Sampler() as s:
        before = s.process(a.pid)
        a.kill()
        a.wait()
        assert isinstance(s.processes([a.pid])[a.pid], metalmem.NoSuchProcess)
    assert before.start_time is not None


def test_gpu_is_none_without_a_gpu_library() -> None:
    with metalmem.Sampler() as s:
        gpu = s.gpu()
        caps = s.capabilities
    if "gpu" not in caps:
        assert gpu is None
        return
    assert gpu is not None
    if PLATFORM == "linux":  # a machine with NVML (the lent GPU machine)
        assert gpu.limit is not None and gpu.limit > 0
        assert gpu.used is not None and gpu.used <= gpu.limit
    else:  # Metal's ceiling and the IORegistry's use: either may be unknown, never made up
        assert gpu.limit is None or gpu.limit > 0
        assert gpu.used is None or gpu.used >= 0


def test_a_closed_sampler_refuses_every_call() -> None:
    s = metalmem.Sampler()
    s.close()
    s.close()  # idempotent
    for call in (s.system, lambda: s.processes([os.getpid()]), s.gpu, s.events):
        with pytest.raises(ValueError, match="closed"):
            call()
    with pytest.raises(ValueError, match="closed"):
        _ = s.capabilities
