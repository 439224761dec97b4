"""metalmem.process: stopping one victim safely, with real children and real signals.

Every process signalled here is a child this test started (tests/helpers.py), addressed by
pid and reaped by the fixture. The paths are run twice where it matters: through the pidfd
(Linux) and through the start-time check that macOS and pidfd-less Linux use.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from metalmem import Sampler
from metalmem import process as process_mod
from metalmem.process import Reclaim, StopResult, stop, wait_for_reclaim
from metalmem.targets import StopMethod, Target

from .helpers import (
    Child,
    Children,
    can_choose_pids,
    has_exited,
    pidfd_has_exited,
    reap,
    spawn_child_at_pid,
    wait_for,
)

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="signals real children; Linux")


@pytest.fixture(params=["pidfd", "start_time"])
def identity(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test through the pidfd and through the start-time fallback."""
    if request.param == "start_time":
        monkeypatch.setattr(process_mod, "_USE_PIDFD", False)
    return str(request.param)


def target_of(child: Child, sampler: Sampler, **stop: Any) -> Target:
    start = sampler.process(child.pid).start_time
    assert start is not None
    return Target(key=f"test/{child.pid}", pid=child.pid, start_time=start, stop=StopMethod(**stop))


def test_stop_terminates_child_that_respects_sigterm(
    identity: str, children: Children, sampler: Sampler, tmp_path: Path
) -> None:
    log = tmp_path / "signals"
    child = children.spawn(signal_log=log)
    record = stop(target_of(child, sampler, grace=10.0), sampler=sampler)
    assert record.result is StopResult.TERMINATED
    assert record.result.is_success
    assert record.steps == ("SIGTERM",)
    assert record.duration < 5.0  # exit was awaited, not the whole grace period
    assert child.signals() == [signal.SIGTERM]
    assert child.has_exited()
    assert reap(child.pid) == 0  # its handler exited cleanly: it was not killed


def test_stop_kills_child_that_ignores_sigterm_after_grace(
    identity: str, children: Children, sampler: Sampler, tmp_path: Path
) -> None:
    child = children.spawn(ignore_term=True, signal_log=tmp_path / "signals")
    record = stop(target_of(child, sampler, grace=0.5), sampler=sampler)
    assert record.result is StopResult.KILLED
    assert record.result.is_success  # a forced kill is still a successful eviction
    assert record.steps == ("SIGTERM", "SIGKILL")
    assert 0.5 <= record.duration < 5.0
    assert child.signals() == [signal.SIGTERM]  # it saw TERM, ignored it, and SIGKILL ended it
    assert reap(child.pid) == -signal.SIGKILL


def test_stop_never_signals_when_start_time_differs(
    identity: str, children: Children, sampler: Sampler, tmp_path: Path
) -> None:
    child = children.spawn(signal_log=tmp_path / "signals")
    real = target_of(child, sampler)
    stale = Target(key=real.key, pid=real.pid, start_time=real.start_time - 1.0)
    record = stop(stale, sampler=sampler)
    assert record.result is StopResult.ALREADY_GONE
    assert not record.result.is_success
    assert record.steps == ()
    time.sleep(0.2)  # a signal, had one been sent, would have been recorded by now
    assert child.signals() == []
    assert not child.has_exited()


@pytest.mark.skipif(not can_choose_pids(), reason="choosing a pid needs root (ns_last_pid)")
def test_stop_never_signals_a_reused_pid(
    identity: str, children: Children, sampler: Sampler, tmp_path: Path
) -> None:
    first = children.spawn()
    target = target_of(first, sampler)
    reap(first.pid)
    second = spawn_child_at_pid(target.pid, signal_log=tmp_path / "signals")
    children.pids.append(second.pid)
    assert second.pid == target.pid  # the pid now names another process
    record = stop(target, sampler=sampler)
    assert record.result is StopResult.ALREADY_GONE
    assert record.steps == ()
    time.sleep(0.2)
    assert second.signals() == []
    assert not second.has_exited()


def test_stop_already_gone_when_child_exited_and_was_reaped(
    identity: str, children: Children, sampler: Sampler
) -> None:
    child = children.spawn()
    target = target_of(child, sampler)
    reap(child.pid)
    record = stop(target, sampler=sampler)
    assert record.result is StopResult.ALREADY_GONE
    assert record.result.is_gone and not record.result.is_success
    assert record.steps == ()


def test_stop_already_gone_when_child_is_a_zombie(
    identity: str, children: Children, sampler: Sampler
) -> None:
    child = children.spawn()
    target = target_of(child, sampler)
    os.kill(child.pid, signal.SIGKILL)  # our unreaped child: the pid cannot be reused yet
    wait_for(lambda: has_exited(child.pid), what="child exit")
    record = stop(target, sampler=sampler)  # exited but not reaped: a zombie has exited
    assert record.result is StopResult.ALREADY_GONE
    assert record.steps == ()


@pytest.mark.parametrize("who", ["pid1", "self", "parent"])
def test_stop_refuses_pid_1_self_and_parent(who: str, sampler: Sampler) -> None:
    pid = {"pid1": 1, "self": os.getpid(), "parent": os.getppid()}[who]
    start = sampler.process(pid).start_time
    assert start is not None
    record = stop(Target(key=who, pid=pid, start_time=start), sampler=sampler)
    assert record.result is StopResult.DENIED
    assert record.steps == ()


def test_stop_refuses_protected_target(
    children: Children, sampler: Sampler, tmp_path: Path
) -> None:
    child = children.spawn(signal_log=tmp_path / "signals")
    t = target_of(child, sampler)
    record = stop(Target(key=t.key, pid=t.pid, start_time=t.start_time, protected=True),
                  sampler=sampler)  # fmt: skip
    assert record.result is StopResult.DENIED
    time.sleep(0.2)
    assert child.signals() == [] and not child.has_exited()


def test_stop_runs_stop_command_instead_of_the_signal(
    children: Children, sampler: Sampler, tmp_path: Path
) -> None:
    child = children.spawn(signal_log=tmp_path / "signals")
    target = target_of(child, sampler, command=("/bin/kill", "-s", "USR1", "{pid}"), grace=0.5)
    record = stop(target, sampler=sampler)
    # USR1 does not end the child: the command ran (USR1 recorded, no TERM), then SIGKILL.
    assert record.result is StopResult.KILLED
    assert record.steps == ("command", "SIGKILL")
    assert child.signals() == [signal.SIGUSR1]


def test_stop_command_that_stops_the_process_counts_as_terminated(
    children: Children, sampler: Sampler, tmp_path: Path
) -> None:
    child = children.spawn(signal_log=tmp_path / "signals")
    command = (sys.executable, "-c", "import os, sys; os.kill(int(sys.argv[1]), 15)", "{pid}")
    record = stop(target_of(child, sampler, command=command), sampler=sampler)
    assert record.result is StopResult.TERMINATED
    assert record.steps == ("command",)
    assert child.signals() == [signal.SIGTERM]


@pytest.mark.parametrize("command", [("false",), ("/nonexistent/stop-it",)])
def test_stop_falls_back_to_the_signal_when_the_command_fails(
    command: tuple[str, ...],
    children: Children,
    sampler: Sampler,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    child = children.spawn(signal_log=tmp_path / "signals")
    with caplog.at_level(logging.WARNING, logger="metalmem.process"):
        record = stop(target_of(child, sampler, command=command), sampler=sampler)
    assert record.result is StopResult.TERMINATED
    assert record.steps == ("command", "SIGTERM")
    assert "event=stop_command_failed" in caplog.text


@pytest.mark.parametrize("ignore_term", [False, True])
def test_stop_signals_the_process_group_it_leads(
    ignore_term: bool, identity: str, children: Children, sampler: Sampler
) -> None:
    child = children.spawn(new_group=True, grandchildren=2, ignore_term=ignore_term)
    assert os.getpgid(child.pid) == child.pid
    for pid in child.grandchildren:
        assert os.getpgid(pid) == child.pid
    record = stop(target_of(child, sampler, process_group=True, grace=0.5), sampler=sampler)
    if ignore_term:
        assert record.result is StopResult.KILLED
        assert record.steps == ("group:SIGTERM", "group:SIGKILL")
    else:
        assert record.result is StopResult.TERMINATED
        assert record.steps == ("group:SIGTERM",)
    for fd in child.grandchild_pidfds:  # the whole group went, not just the leader
        wait_for(functools.partial(pidfd_has_exited, fd), what="grandchild exit")


def test_stop_signals_only_the_process_when_it_does_not_lead_its_group(
    children: Children, sampler: Sampler, caplog: pytest.LogCaptureFixture
) -> None:
    child = children.spawn()  # in our own process group: signalling it would hit us
    assert os.getpgid(child.pid) == os.getpgrp()
    with caplog.at_level(logging.WARNING, logger="metalmem.process"):
        record = stop(target_of(child, sampler, process_group=True), sampler=sampler)
    assert record.result is StopResult.TERMINATED
    assert record.steps == ("SIGTERM",)
    assert "reason=not_group_leader" in caplog.text


def test_stop_logs_one_structured_record(
    children: Children, sampler: Sampler, caplog: pytest.LogCaptureFixture
) -> None:
    child = children.spawn()
    with caplog.at_level(logging.INFO, logger="metalmem.process"):
        stop(target_of(child, sampler), sampler=sampler)
    records = [r.getMessage() for r in caplog.records if "event=stop " in r.getMessage()]
    assert len(records) == 1
    assert f"pid={child.pid}" in records[0] and "result=terminated" in records[0]


@pytest.mark.parametrize(
    ("result", "is_success", "is_gone"),
    [
        (StopResult.TERMINATED, True, True),
        (StopResult.KILLED, True, True),
        (StopResult.ALREADY_GONE, False, True),
        (StopResult.DENIED, False, False),
        (StopResult.FAILED, False, False),
    ],
)
def test_stop_result_success_and_gone(result: StopResult, is_success: bool, is_gone: bool) -> None:
    assert result.is_success is is_success
    assert result.is_gone is is_gone


# --- wait_for_reclaim ----------------------------------------------------------------------


def test_wait_for_reclaim_sees_a_stopped_childs_memory_come_back(tmp_path: Path) -> None:
    """In a memory cgroup of its own, whose available memory (limit - usage) nothing else
    moves: host-wide MemAvailable here is adjusted by the VM's balloon under a test (a 256 MiB
    allocation once moved it by 0), and other tests' children move it too."""
    from . import cgroups

    reason = cgroups.skip_reason(psi=False)
    if reason is not None:
        pytest.skip(reason)
    hold = (
        "b = bytearray(b'x') * (256 << 20); print('ready', flush=True); import time; time.sleep(60)"
    )
    with cgroups.memory_cgroup(512 << 20) as cg, Sampler(scope=cg.scope) as scoped:
        proc = cg.popen([sys.executable, "-c", hold], stdout=subprocess.PIPE)
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
            rec = scoped.process(proc.pid)
            assert rec.footprint is not None and rec.footprint >= 256 << 20
            assert rec.start_time is not None
            baseline = scoped.system().available
            assert baseline is not None
            target = Target(key="reclaim", pid=proc.pid, start_time=rec.start_time)
            assert stop(target, sampler=scoped).result is StopResult.TERMINATED
            proc.wait(10)
            reclaim = wait_for_reclaim(
                scoped, baseline, rec.footprint, share=0.5, settle_timeout=10.0
            )
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert reclaim.is_settled
    assert reclaim.reclaimed >= rec.footprint // 2


def test_wait_for_reclaim_gives_up_at_the_settle_timeout(sampler: Sampler) -> None:
    now = [0.0]
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        now[0] += seconds

    baseline = sampler.system().available
    assert baseline is not None
    reclaim = wait_for_reclaim(
        sampler,
        baseline,
        1 << 50,  # 1 PiB: never comes back
        settle_timeout=2.0,
        interval=0.25,
        clock=lambda: now[0],
        sleep=sleep,
    )
    assert reclaim == Reclaim(reclaim.reclaimed, False)
    assert now[0] == pytest.approx(2.0)
    assert len(sleeps) == 8


def test_wait_for_reclaim_without_footprint_settles_at_once(sampler: Sampler) -> None:
    def sleep(seconds: float) -> None:
        raise AssertionError("must not wait")

    baseline = sampler.system().available
    assert baseline is not None
    assert wait_for_reclaim(sampler, baseline, None, sleep=sleep).is_settled


@pytest.mark.parametrize("share", [0.0, -0.1, 1.5])
def test_wait_for_reclaim_rejects_share_outside_0_1(share: float, sampler: Sampler) -> None:
    with pytest.raises(ValueError, match="share"):
        wait_for_reclaim(sampler, 0, 1, share=share)
