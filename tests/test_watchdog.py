"""The watchdog loop with the real sampler and real child processes."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import threading
import time

import pytest

import metalmem
from metalmem.level import Level
from metalmem.pressure import Classifier, PressurePolicy
from metalmem.watchdog import Listeners, State, Watchdog

from .helpers import Children, wait_for

MiB = 1 << 20

# Only the available-memory signal: other signals (PSI, rates) would see other tests' load.
QUIET = {
    "warning_gpu_headroom": None,
    "critical_gpu_headroom": None,
    "warning_psi_some_pct": None,
    "critical_psi_some_pct": None,
    "warning_psi_full_pct": None,
    "critical_psi_full_pct": None,
    "warning_swapout_rate": None,
    "critical_swapout_rate": None,
    "warning_pageout_rate": None,
    "critical_pageout_rate": None,
    "warning_forecast": None,
    "critical_forecast": None,
}


@dataclasses.dataclass(frozen=True)
class _Target:
    key: str
    pid: int


class _Pipe:
    """An event source over a real pipe: the test writes a level byte to fire it."""

    def __init__(self) -> None:
        self.r, self.w = os.pipe2(os.O_NONBLOCK)

    def fileno(self) -> int:
        return self.r

    def fire(self, level: Level) -> None:
        os.write(self.w, bytes([int(level)]))

    def read(self) -> Level | None:
        try:
            data = os.read(self.r, 64)
        except BlockingIOError:
            return None
        return Level(max(data)) if data else None

    def close(self) -> None:
        os.close(self.r)
        os.close(self.w)


HOG = "b = bytearray(b'x') * (256 << 20); print('ready', flush=True); import time; time.sleep(60)"


def test_levels_follow_a_real_allocation_and_return_to_normal() -> None:
    """In a memory cgroup of its own (available = limit - usage): host-wide MemAvailable on
    this workplace's VMs is moved by the balloon under a test (a 256 MiB allocation once moved
    it by 0), and by everything else running here."""
    from . import cgroups

    reason = cgroups.skip_reason(psi=False)
    if reason is not None:
        pytest.skip(reason)
    with cgroups.memory_cgroup(2 << 30) as cg, metalmem.Sampler(scope=cg.scope) as sampler:
        m = sampler.system()
        assert m.total is not None and m.available is not None
        total, a0 = m.total, m.available
        policy = PressurePolicy(
            warning_available=(a0 - 400 * MiB) / total,
            critical_available=(a0 - 900 * MiB) / total,
            margin=100 * MiB / total,
            transition_period=0.5,
            soft_grace=0.0,
            **QUIET,  # type: ignore[arg-type]
        )
        changes: list[tuple[Level, Level]] = []
        listeners = Listeners(on_level_change=[lambda old, new, a: changes.append((old, new))])
        dog = Watchdog(
            sampler,
            Classifier(policy, interval=0.1),
            interval=0.1,
            min_interval=0.05,
            listeners=listeners,
        )
        hogs = []
        try:
            with dog:
                for _ in range(6):  # 256 MiB at a time until CRITICAL
                    hog = cg.popen([sys.executable, "-c", HOG], stdout=subprocess.PIPE)
                    hogs.append(hog)
                    assert hog.stdout is not None and hog.stdout.readline().strip() == b"ready"
                    a = dog.state.seq
                    wait_for(lambda a=a: dog.state.seq > a + 1, timeout=5, what="two ticks")
                    assessment = dog.state.assessment
                    if assessment is not None and assessment.level == Level.CRITICAL:
                        break
                wait_for(
                    lambda: (
                        (Level.WARNING, Level.CRITICAL) in changes
                        or (Level.NORMAL, Level.CRITICAL) in changes
                    ),
                    timeout=5,
                    what="CRITICAL",
                )
                assert (Level.NORMAL, Level.WARNING) in changes
                for hog in hogs:
                    hog.kill()
                    hog.wait()
                wait_for(
                    lambda: changes and changes[-1][1] == Level.NORMAL,
                    timeout=10,
                    what="back to NORMAL",
                )
            assert dog.state.assessment is not None
            assert dog.state.assessment.level == Level.NORMAL
        finally:
            for hog in hogs:
                if hog.poll() is None:
                    hog.kill()
                    hog.wait()


def test_pressure_event_wakes_the_loop_at_once(sampler: metalmem.Sampler) -> None:
    source = _Pipe()
    ticks: list[float] = []
    listeners = Listeners(on_sample=[lambda s: ticks.append(time.monotonic())])
    dog = Watchdog(sampler, Classifier(), interval=10.0, events=source, listeners=listeners)
    try:
        with dog:
            wait_for(lambda: len(ticks) >= 1, timeout=5, what="first tick")
            time.sleep(0.2)  # settle into the 10 s wait
            assert len(ticks) == 1
            fired = time.monotonic()
            source.fire(Level.WARNING)
            wait_for(lambda: len(ticks) >= 2, timeout=2, what="tick after the event")
        assert ticks[1] - fired < 0.05, f"woke after {ticks[1] - fired:.3f} s"
        assert dog.state.counters.get("pressure_events", 0) == 1
    finally:
        source.close()


def test_stop_returns_within_a_second(sampler: metalmem.Sampler) -> None:
    dog = Watchdog(sampler, Classifier(), interval=30.0)
    dog.start()
    wait_for(lambda: dog.state.seq >= 1, timeout=5, what="first tick")
    t0 = time.monotonic()
    dog.stop()
    assert time.monotonic() - t0 < 1.0
    assert not any(t.name == "metalmem-watchdog" for t in threading.enumerate())


def test_failing_and_slow_listeners_do_not_stop_or_delay_the_loop(
    sampler: metalmem.Sampler,
) -> None:
    release = threading.Event()

    def boom(state: State) -> None:
        raise RuntimeError("listener bug")

    def slow(state: State) -> None:
        release.wait(5)

    dog = Watchdog(
        sampler,
        Classifier(),
        interval=0.05,
        min_interval=0.05,
        listeners=Listeners(on_sample=[boom, slow]),
    )
    with dog:
        wait_for(lambda: dog.state.seq >= 10, timeout=5, what="ten ticks despite listeners")
        release.set()
        wait_for(
            lambda: dog.state.counters.get("listener_errors", 0) >= 1,
            timeout=5,
            what="the failure counted",
        )


def test_state_has_targets_processes_and_heartbeat(
    sampler: metalmem.Sampler, children: Children
) -> None:
    child = children.spawn(allocate_mib=16)
    gone = children.spawn()
    from .helpers import reap

    reap(gone.pid)
    targets = [_Target("ns/a", child.pid), _Target("b", gone.pid)]
    dog = Watchdog(sampler, Classifier(), targets, interval=0.05, min_interval=0.05)
    state = dog.tick()
    assert state.seq == 1 and state.system is not None and state.assessment is not None
    proc = state.processes["ns/a"]
    assert isinstance(proc, metalmem.ProcessMemory) and proc.footprint is not None
    assert proc.footprint >= 16 * MiB
    assert isinstance(state.processes["b"], metalmem.NoSuchProcess)
    assert state.heartbeat == dog.heartbeat and state.history[-1].level == Level.NORMAL
    with pytest.raises(dataclasses.FrozenInstanceError):
        state.seq = 5  # type: ignore[misc]


def test_next_wait_shortens_with_pressure(sampler: metalmem.Sampler) -> None:
    dog = Watchdog(sampler, Classifier(), interval=2.0, min_interval=0.1)
    a = Classifier().assess(sampler.system(), time.monotonic())
    assert dog.next_wait(a) == 2.0
    warning = dataclasses.replace(a, level=Level.WARNING)
    critical = dataclasses.replace(a, level=Level.CRITICAL)
    assert dog.next_wait(warning) == 0.5
    assert dog.next_wait(critical) == 0.1
    soon = dataclasses.replace(a, forecast_seconds=5.0)
    assert dog.next_wait(soon) == 0.5


def test_next_wait_is_bounded_by_the_fastest_fall_seen(sampler: metalmem.Sampler) -> None:
    policy = PressurePolicy(**QUIET)  # type: ignore[arg-type]
    dog = Watchdog(sampler, Classifier(policy), interval=2.0, min_interval=0.01)
    m = sampler.system()._replace(total=10 * 2**30, available=6 * 2**30, timestamp=100.0)
    a = Classifier(policy).assess(m, 100.0)
    assert dog.next_wait(a, m) == 2.0  # no fall seen yet: the interval
    dog._note_fall(m)
    # 1 GiB gone in 0.5 s: 2 GiB/s. Critical at 1 GiB, so 4 GiB of headroom last 2 s.
    fell = m._replace(available=5 * 2**30, timestamp=100.5)
    dog._note_fall(fell)
    assert dog.next_wait(a, fell) == pytest.approx(1.0)  # half the time to the threshold
    near = fell._replace(available=1 * 2**30 + 2**27)  # 128 MiB above it: 1/16 s at 2 GiB/s
    assert dog.next_wait(a, near) == pytest.approx(1 / 32)
    # Noise between samples closer than 50 ms is not a rate.
    dog2 = Watchdog(sampler, Classifier(policy), interval=2.0, min_interval=0.01)
    dog2._note_fall(m)
    dog2._note_fall(m._replace(available=m.available - 2**20, timestamp=100.001))
    assert dog2.next_wait(a, near) == 2.0
