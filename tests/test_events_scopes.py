"""An event on every scope wakes the loop: real memory, real kernel notifications.

The watchdog ticks every 60 s here, so only an event can make it tick within the deadline.
cgroup v1 (this project's reference machine): ``memory.usage_in_bytes`` thresholds and
``memory.pressure_level`` through ``cgroup.event_control`` and eventfds. Host and cgroup v2:
the watch (a headroom-paced read of available memory, there being no kernel notification for
it) beside the PSI trigger. Each test skips, with the reason, where its scope is not here.
"""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys
import time

import pytest

import metalmem
from metalmem.pressure import Classifier, PressurePolicy
from metalmem.watchdog import Watchdog

from . import cgroups
from .helpers import wait_for
from .test_watchdog import QUIET

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux scopes")

MiB = 1 << 20
FIXTURE_ROOT = pathlib.Path(__file__).parent / "fixtures" / "shared" / "procfs" / "root1"
SLOW = 60.0  # the loop's interval: a tick before it is an event's doing

GROW = """
import sys, time
sys.stdin.readline()
hold = bytearray(b"\\x01") * (int(sys.argv[1]) << 20)
print("held", flush=True)
sys.stdin.readline()
"""


def _grower(mib: int, cg: cgroups.MemoryCgroup | None = None) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-c", GROW, str(mib)]
    kwargs = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE}
    proc = cg.popen(args, **kwargs) if cg is not None else subprocess.Popen(args, **kwargs)  # type: ignore[arg-type]
    return proc


def _loop(
    sampler: metalmem.Sampler, policy: PressurePolicy
) -> tuple[Watchdog, metalmem.PressureEvents]:
    events = sampler.events()
    dog = Watchdog(
        sampler, Classifier(policy, interval=SLOW), (), interval=SLOW, min_interval=0.05,
        events=events,
    )  # fmt: skip
    return dog, events


def _wakes_on_growth(
    sampler: metalmem.Sampler, policy: PressurePolicy, grower: subprocess.Popen[bytes], source: str
) -> None:
    dog, events = _loop(sampler, policy)
    try:
        with dog:
            wait_for(lambda: dog.state.seq >= 1, timeout=10, what="the first tick")
            assert source in events.sources, events.sources
            before = dog.state.seq
            assert grower.stdin is not None and grower.stdout is not None
            grower.stdin.write(b"go\n")
            grower.stdin.flush()
            assert grower.stdout.readline() == b"held\n"
            wait_for(lambda: dog.state.seq > before, timeout=10, what="a tick woken by the event")
            assert dog.state.counters.get("pressure_events", 0) >= 1
            assert time.monotonic() - dog.state.started_at < SLOW
    finally:
        events.close()
        grower.kill()
        grower.wait()


def test_a_v1_usage_threshold_wakes_the_loop() -> None:
    reason = cgroups.skip_reason(psi=False)
    if reason:
        pytest.skip(reason)
    if not (cgroups.V1_MEMORY / "memory.usage_in_bytes").exists():
        pytest.skip("no cgroup v1 memory controller here (the v2 test covers v2)")
    limit = 256 * MiB
    # WARNING below 50 % available: 128 MiB of growth crosses it (and the usage threshold).
    policy = PressurePolicy(warning_available=0.5, critical_available=0.2, **QUIET)  # type: ignore[arg-type]
    with cgroups.memory_cgroup(limit) as cg:
        grower = _grower(150, cg)
        with metalmem.Sampler(scope=cg.scope) as s:
            _wakes_on_growth(s, policy, grower, "v1_usage")


def test_v1_pressure_level_is_registered_on_a_v1_scope() -> None:
    reason = cgroups.skip_reason(psi=False)
    if reason:
        pytest.skip(reason)
    if not (cgroups.V1_MEMORY / "memory.usage_in_bytes").exists():
        pytest.skip("no cgroup v1 memory controller here")
    with cgroups.memory_cgroup(64 * MiB) as cg, metalmem.Sampler(scope=cg.scope) as s:
        with s.events() as ev:
            assert "v1_pressure_level" in ev.sources
            # Reclaim with nothing to reclaim: a child holding more than fits fires "medium"
            # or "critical" before (or as) it is OOM-killed.
            child = cg.popen([sys.executable, "-c", "b = bytearray(b'x') * (96 << 20)"])
            deadline = time.monotonic() + 20
            level = None
            while time.monotonic() < deadline and level is None:
                level = ev.read()
                if level is None:
                    time.sleep(0.01)
            child.wait()
        assert level is not None and level >= metalmem.Level.WARNING, level


def test_the_watch_wakes_the_loop_on_the_host() -> None:
    with metalmem.Sampler() as s:
        m = s.system()
        assert m.total and m.available
        # WARNING just below what is available now: a 256 MiB child crosses it.
        warning = (m.available - 128 * MiB) / m.total
        policy = PressurePolicy(
            warning_available=warning, critical_available=warning / 2, margin=0.0, **QUIET
        )  # type: ignore[arg-type]
        _wakes_on_growth(s, policy, _grower(256), "watch")


def test_a_v2_scope_has_the_watch_and_psi() -> None:
    if (cgroups.V1_MEMORY / "memory.usage_in_bytes").exists():
        pytest.skip("this host's memory controller is cgroup v1 (no v2 memory.current)")
    reason = cgroups.skip_reason()
    if reason:
        pytest.skip(reason)
    limit = 256 * MiB
    policy = PressurePolicy(warning_available=0.5, critical_available=0.2, **QUIET)  # type: ignore[arg-type]
    with cgroups.memory_cgroup(limit) as cg:
        grower = _grower(150, cg)
        with metalmem.Sampler(scope=cg.scope) as s:
            with s.events() as ev:
                assert "psi" in ev.sources
            _wakes_on_growth(s, policy, grower, "watch")


def test_host_psi_trigger_is_a_source_where_the_kernel_takes_it() -> None:
    with metalmem.Sampler() as s:
        if "psi" not in s.capabilities:
            pytest.skip("no /proc/pressure/memory on this kernel")
        with s.events() as ev:
            if ev.psi_error is not None:
                pytest.skip(f"the kernel refused a PSI trigger: errno {ev.psi_error}")
            assert "psi" in ev.sources


def test_a_reader_paced_watch_is_polled_by_the_reader_alone(tmp_path: pathlib.Path) -> None:
    # The watchdog polls the watch from its own loop (issue 15: one wake-up per tick when
    # idle); the event thread must then never read it, and the reader sees each crossing.
    # A root of our own, whose meminfo the test writes: this VM's balloon hides allocations
    # from the host's MemAvailable (test_the_watch_wakes_the_loop_on_the_host is the live one).
    root = tmp_path / "root"
    shutil.copytree(FIXTURE_ROOT, root)

    def available(kib: int) -> None:
        (root / "proc" / "meminfo").write_text(
            f"MemTotal: 8388608 kB\nMemFree: 1048576 kB\nMemAvailable: {kib} kB\n"
        )

    available(4 << 20)  # 4 GiB of 8
    with metalmem.Sampler(root=str(root)) as s, s.events() as ev:
        ev.arm(3 << 30, 1 << 30, min_period=0.01, max_period=0.05)
        assert ev.watch() is None  # thread-paced: not the reader's to poll
        ev.arm(3 << 30, 1 << 30, min_period=0.01, max_period=0.05, paced_by_reader=True)
        assert "watch" in ev.sources
        polls = ev.polls
        assert ev.watch() == (False, 0.05)  # 1 GiB above WARNING: the longest period
        assert ev.polls == polls + 1
        # A thread-paced watch would poll ~10 times in 0.5 s at this max_period.
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            time.sleep(0.05)
        assert ev.polls == polls + 1
        available(2 << 20)  # below WARNING
        crossed = ev.watch()
        assert crossed is not None and crossed[0] is True and 0.01 <= crossed[1] <= 0.05
        assert ev.watch() == (False, crossed[1])  # reported once
        available(4 << 20)  # back above: a crossing too
        back = ev.watch()
        assert back is not None and back[0] is True
        assert ev.read() is None  # the thread posted nothing for any of it
