"""Eviction wired into the watchdog: real children, real signals, real memory."""

from __future__ import annotations

import pathlib
import signal
import subprocess
import sys
from typing import Any

import pytest

import metalmem
from metalmem.eviction import EvictionMode, EvictionPolicy, Planner
from metalmem.level import Level
from metalmem.pressure import Classifier, PressurePolicy
from metalmem.targets import Priority, StopMethod, Target
from metalmem.watchdog import EvictionRecord, Listeners, Watchdog

from .helpers import Child, Children, wait_for
from .test_watchdog import QUIET

MiB = 1 << 20
pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="Linux signals and /proc")


def _target(
    s: metalmem.Sampler,
    child: Child,
    key: str,
    priority: Priority,
    *,
    protected: bool = False,
    grace: float = 2.0,
) -> Target:
    start = s.process(child.pid).start_time
    assert start is not None
    return Target(key, child.pid, start, priority, protected, stop=StopMethod(grace=grace))


def _critical_now(s: metalmem.Sampler, **extra: float) -> PressurePolicy:
    """Thresholds just above what is available now: the host reads CRITICAL (hard)."""
    m = s.system()
    assert m.total is not None and m.available is not None
    critical = min((m.available + 256 * MiB) / m.total, 0.997)
    if critical <= m.available / m.total:
        pytest.skip("this host is almost idle: no fraction of it can read CRITICAL")
    return PressurePolicy(
        warning_available=critical + 0.001,
        critical_available=critical,
        margin=0.0005,
        transition_period=extra.pop("transition_period", 30.0),
        **QUIET,  # type: ignore[arg-type]
    )


def _eviction(mode: EvictionMode, **kw: float) -> EvictionPolicy:
    base = {
        "min_managed_share": 0.0,
        "floor": 1,
        "cooldown": 0.0,
        "max_evictions": 1,
        "window": 600.0,
        "min_reclaim": 0,
        "settle_timeout": 1.0,
    }
    base.update(kw)
    return EvictionPolicy(mode=mode, **base)  # type: ignore[arg-type]


def _dog(
    sampler: metalmem.Sampler,
    pressure: PressurePolicy,
    targets: list[Target],
    mode: EvictionMode,
    **kwargs: Any,
) -> Watchdog:
    """A watchdog ticking every 50 ms that plans with ``_eviction(mode)``."""
    return Watchdog(
        sampler,
        Classifier(pressure, interval=0.05),
        targets,
        interval=0.05,
        min_interval=0.05,
        planner=Planner(_eviction(mode), pressure),
        **kwargs,
    )


def _signalled(c: Child) -> list[int]:
    return c.signals()


def test_the_unprotected_batch_child_goes_first_and_alone(
    sampler: metalmem.Sampler, children: Children, tmp_path: pathlib.Path
) -> None:
    kids = {
        name: children.spawn(allocate_mib=32, signal_log=tmp_path / name)
        for name in ("batch", "normal", "high", "protected")
    }
    targets = [
        _target(sampler, kids["batch"], "batch", Priority.BATCH),
        _target(sampler, kids["normal"], "normal", Priority.NORMAL),
        _target(sampler, kids["high"], "high", Priority.HIGH),
        _target(sampler, kids["protected"], "protected", Priority.BATCH, protected=True),
    ]
    pressure = _critical_now(sampler)
    records: list[EvictionRecord] = []
    dog = _dog(
        sampler,
        pressure,
        targets,
        EvictionMode.ENFORCE,
        state_dir=str(tmp_path / "state"),
        listeners=Listeners(on_eviction=[records.append]),
    )
    with dog:
        wait_for(lambda: records, timeout=10, what="an eviction")
        wait_for(
            lambda: dog.state.skip_counts.get("budget_exhausted"),
            timeout=5,
            what="the budget stops further evictions",
        )
    assert [r.key for r in records] == ["batch"]
    assert records[0].result == "terminated" and records[0].priority == "batch"
    assert kids["batch"].has_exited()
    assert _signalled(kids["batch"]) == [signal.SIGTERM]
    for name in ("normal", "high", "protected"):
        assert _signalled(kids[name]) == [], name
        assert not kids[name].has_exited(), name
    assert dog.is_blocked("batch") and dog.state.blocked == ("batch",)
    assert dog.state.eviction_counts == {("memory.available", "terminated"): 1}


def test_floor_keeps_the_last_target(
    sampler: metalmem.Sampler, children: Children, tmp_path: pathlib.Path
) -> None:
    only = children.spawn(allocate_mib=16, signal_log=tmp_path / "only")
    pressure = _critical_now(sampler)
    dog = _dog(
        sampler, pressure, [_target(sampler, only, "only", Priority.BATCH)], EvictionMode.ENFORCE
    )
    with dog:
        wait_for(lambda: dog.state.skip_counts.get("floor"), timeout=5, what="floor skip")
    assert _signalled(only) == [] and not only.has_exited()
    assert dog.state.skips[-1].reason == "floor"


def test_a_child_ignoring_sigterm_is_killed_and_counted_as_success(
    sampler: metalmem.Sampler, children: Children, tmp_path: pathlib.Path
) -> None:
    stubborn = children.spawn(allocate_mib=16, ignore_term=True, signal_log=tmp_path / "s")
    keeper = children.spawn()
    targets = [
        _target(sampler, stubborn, "stubborn", Priority.LOW, grace=0.5),
        _target(sampler, keeper, "keeper", Priority.HIGH),
    ]
    pressure = _critical_now(sampler)
    records: list[EvictionRecord] = []
    dog = _dog(
        sampler,
        pressure,
        targets,
        EvictionMode.ENFORCE,
        listeners=Listeners(on_eviction=[records.append]),
    )
    with dog:
        wait_for(lambda: records, timeout=10, what="the eviction")
    assert records[0].result == "killed" and records[0].key == "stubborn"
    assert stubborn.has_exited() and _signalled(stubborn) == [signal.SIGTERM]
    assert stubborn.popen.wait(5) == -signal.SIGKILL
    assert dog.is_blocked("stubborn")
    assert dog.state.eviction_counts[("memory.available", "killed")] == 1


@pytest.mark.parametrize("mode", [EvictionMode.DRY_RUN, EvictionMode.OBSERVE])
def test_dry_run_and_observe_send_no_signal(
    mode: EvictionMode, sampler: metalmem.Sampler, children: Children, tmp_path: pathlib.Path
) -> None:
    a = children.spawn(allocate_mib=16, signal_log=tmp_path / "a")
    b = children.spawn(allocate_mib=16, signal_log=tmp_path / "b")
    targets = [_target(sampler, a, "a", Priority.BATCH), _target(sampler, b, "b", Priority.HIGH)]
    pressure = _critical_now(sampler)
    dog = _dog(sampler, pressure, targets, mode)
    with dog:
        if mode == EvictionMode.DRY_RUN:
            wait_for(lambda: dog.state.evictions, timeout=5, what="a would-evict record")
            assert dog.state.evictions[-1].result == "dry-run"
            assert dog.state.evictions[-1].key == "a"
        else:
            wait_for(lambda: dog.state.skip_counts.get("disabled"), timeout=5, what="skip")
        wait_for(lambda: dog.state.seq > 20, timeout=5, what="more ticks")
    assert _signalled(a) == [] and _signalled(b) == []
    assert not a.has_exited() and not b.has_exited()
    assert dog.state.blocked == ()


def test_respawn_block_survives_a_restart_and_clears_after_normal_holds(
    sampler: metalmem.Sampler, children: Children, tmp_path: pathlib.Path
) -> None:
    state_dir = str(tmp_path / "state")
    victim = children.spawn(allocate_mib=16)
    keeper = children.spawn()
    targets = [
        _target(sampler, victim, "v", Priority.BATCH),
        _target(sampler, keeper, "k", Priority.HIGH),
    ]
    pressure = _critical_now(sampler)
    first = _dog(sampler, pressure, targets, EvictionMode.ENFORCE, state_dir=state_dir)
    with first:
        wait_for(lambda: first.state.evictions, timeout=10, what="the eviction")
    assert first.is_blocked("v")
    # The agent restarts on a host that is fine now: NORMAL must hold for the transition
    # period (0.5 s) before the block clears; until then it is still in force.
    calm = PressurePolicy(transition_period=0.5, **QUIET)  # type: ignore[arg-type]
    unblocked: list[tuple[str, ...]] = []
    second = _dog(
        sampler,
        calm,
        [targets[1]],
        EvictionMode.ENFORCE,
        state_dir=state_dir,
        listeners=Listeners(on_unblock=[unblocked.append]),
    )
    assert second.is_blocked("v") and second.state.blocked == ("v",)
    with second:
        wait_for(lambda: unblocked, timeout=5, what="the unblock")
        assert second.state.assessment is not None
        assert second.state.assessment.level == Level.NORMAL
    assert unblocked == [("v",)] and not second.is_blocked("v")
    third = Watchdog(sampler, Classifier(calm), [], state_dir=state_dir)
    assert not third.is_blocked("v")


HOLD = r"""
import time
hold = bytearray(b"\x01") * (64 << 20)
print("ready", flush=True)
time.sleep(120)
"""

GROW = r"""
import sys, time
chunks = []
print("ready", flush=True)
while True:
    chunks.append(bytearray(b"\x01") * (4 << 20))
    time.sleep(0.05)
"""


def test_real_pressure_in_a_cgroup_evicts_before_the_oom_killer(
    children: Children, tmp_path: pathlib.Path
) -> None:
    from . import cgroups

    reason = cgroups.skip_reason()
    if reason:
        pytest.skip(reason)
    with cgroups.memory_cgroup(256 * MiB) as cg:
        holder = cg.popen([sys.executable, "-c", HOLD], stdout=subprocess.PIPE)
        grower = cg.popen([sys.executable, "-c", GROW], stdout=subprocess.PIPE)
        for p in (holder, grower):
            assert p.stdout is not None and p.stdout.readline() == b"ready\n"
        with metalmem.Sampler(scope=cg.scope) as s:
            targets = []
            for key, proc, prio in (
                ("holder", holder, Priority.HIGH),
                ("grower", grower, Priority.LOW),
            ):
                start = s.process(proc.pid).start_time
                assert start is not None
                targets.append(Target(key, proc.pid, start, prio, stop=StopMethod(grace=1.0)))
            pressure = PressurePolicy(
                warning_available=0.35, critical_available=0.25, soft_grace=0.0, **QUIET
            )  # type: ignore[arg-type]
            records: list[EvictionRecord] = []
            dog = _dog(
                s,
                pressure,
                targets,
                EvictionMode.ENFORCE,
                listeners=Listeners(on_eviction=[records.append]),
            )
            with dog:
                wait_for(lambda: records, timeout=20, interval=0.05, what="the eviction")
        assert records[0].key == "grower"
        assert records[0].result in ("terminated", "killed")
        assert grower.wait(5) is not None
        assert holder.poll() is None, "the high-priority child must survive"
        assert cg.oom_kills() == 0, "the kernel OOM killer fired first"
