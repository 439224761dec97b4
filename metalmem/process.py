"""Stop one victim safely: identity check, SIGTERM (or the target's stop command), grace,
SIGKILL, confirmed exit; then wait for its memory to come back.

Identity before any signal (STYLE rule 15, psutil ``_raise_if_pid_reused``, earlyoom
``kill.c``): a :class:`~metalmem.targets.Target` names a process by ``(pid, start_time)``, and
no signal reaches a pid unless the process behind it is that one.

- Linux: ``os.pidfd_open(pid)`` first, then the start time is read and compared. The open
  pidfd pins the pid: while it is open the number cannot be given to another process, so a
  start time that matches after the open proves the pidfd is the target's, and every later
  signal goes through ``signal.pidfd_send_signal`` on it. Exit is awaited by polling the
  pidfd, which becomes readable when the process exits (zombie or reaped: verified on 6.x).
- macOS: a kqueue ``EVFILT_PROC``/``NOTE_EXIT`` watch is registered, and the start time is
  compared again immediately before every ``kill(2)``. What remains is the window between
  that check and the syscall (microseconds) in which the target would have to exit, be
  reaped, and its pid be handed to a new process; macOS allocates pids in sequence up to
  99999 before wrapping, so that needs ~100 000 process creations within the window.
- Linux without pidfds (kernels < 5.3, seccomp profiles that refuse ``pidfd_open``): as on
  macOS, with exit detected by re-sampling every ``poll_interval`` (a zombie counts as exited).

A forced kill is still a successful eviction (the LLMKube defect, reference/peers.md b1):
see :attr:`StopResult.is_success`.
"""

from __future__ import annotations

import enum
import errno
import logging
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple, Protocol

from .errors import AccessDenied, Error, NoSuchProcess
from .eviction import SkipReason
from .procstate import is_zombie
from .sampler import Sampler
from .targets import Target

if TYPE_CHECKING:
    from .gate import Refusal

__all__ = [
    "DEFAULT_KILL_TIMEOUT",
    "Reclaim",
    "StopRecord",
    "StopResult",
    "stop",
    "wait_for_reclaim",
]

log = logging.getLogger(__name__)

# How long a process may take to disappear after SIGKILL before the stop counts as failed:
# a process in uninterruptible sleep (D state, e.g. stuck on a dying NFS mount or a GPU driver)
# cannot die until the kernel call returns. Generous, because the caller waits anyway.
DEFAULT_KILL_TIMEOUT = 5.0

# Linux >= 5.3 (pidfd_open) and Python >= 3.9; tests turn it off to run the fallback path.
_USE_PIDFD = sys.platform == "linux"


class StopResult(enum.StrEnum):
    """How a stop ended; the values are the stable strings of logs and metric labels."""

    TERMINATED = "terminated"  # exited within the grace period after SIGTERM / the command
    KILLED = "killed"  # needed SIGKILL, and is gone
    ALREADY_GONE = "already_gone"  # exited, or its pid names another process, before we acted
    DENIED = "denied"  # the OS refused the signal, or a safety rule refused the target
    FAILED = "failed"  # still running after SIGKILL, or an unexpected error
    UNLOADED = "unloaded"  # its model unloaded through the server's API, memory verified back

    @property
    def is_success(self) -> bool:
        """We stopped it: ``terminated``, ``killed`` or ``unloaded``.

        ``already_gone`` is not a success: the memory is free, but not by our doing, and an
        eviction counter must not count exits that happened anyway. See :attr:`is_gone`.
        """
        return self in (StopResult.TERMINATED, StopResult.KILLED, StopResult.UNLOADED)

    @property
    def is_gone(self) -> bool:
        """The target's process no longer runs (success or ``already_gone``): retrying it is
        pointless, and its memory should be coming back."""
        return self is not StopResult.DENIED and self is not StopResult.FAILED


@dataclass(frozen=True, slots=True)
class StopRecord:
    """What :func:`stop` did to one target.

    ``steps`` are the actions taken, in order: signal names (``"SIGTERM"``, ``"SIGKILL"``,
    prefixed ``"group:"`` when sent to the process group), ``"command"`` and ``"unload"`` (the
    model's unload request, :mod:`metalmem.unload`); empty when nothing was sent. ``duration``
    is seconds from the call to the outcome.
    """

    key: str
    pid: int
    start_time: float
    result: StopResult
    steps: tuple[str, ...]
    duration: float
    message: str


class _Handle(Protocol):
    """One verified process: signals it and waits for its exit."""

    def has_exited(self) -> bool: ...
    def wait(self, timeout: float) -> bool: ...
    def send(self, sig: int, pgid: int | None) -> None: ...
    def close(self) -> None: ...


if sys.platform == "linux":

    class _PidfdHandle:
        """Linux: every signal goes through the pidfd; the pidfd polls readable on exit."""

        def __init__(self, pid: int) -> None:
            self._fd = os.pidfd_open(pid)
            self._poll = select.poll()
            self._poll.register(self._fd, select.POLLIN)

        def has_exited(self) -> bool:
            return self.wait(0.0)

        def wait(self, timeout: float) -> bool:
            # poll() retries on EINTR with the remaining timeout (PEP 475).
            return bool(self._poll.poll(max(0, round(timeout * 1000))))

        def send(self, sig: int, pgid: int | None) -> None:
            if pgid is None:
                signal.pidfd_send_signal(self._fd, sig)
            elif not self.has_exited():
                # The open pidfd pins the leader's pid, and with it the group id: no new process
                # (and so no new group) can get this number while we hold the fd.
                os.killpg(pgid, sig)
            else:
                raise ProcessLookupError(errno.ESRCH, "process group leader has exited")

        def close(self) -> None:
            os.close(self._fd)


class _PollingHandle:
    """No pidfd: the start time is compared right before each ``kill(2)``; exit is seen by
    re-sampling (NoSuchProcess, another start time, or a zombie)."""

    def __init__(
        self,
        target: Target,
        sampler: Sampler,
        clock: Callable[[], float],
        sleep: Callable[[float], None],
        interval: float,
    ) -> None:
        self._target = target
        self._sampler = sampler
        self._clock = clock
        self._sleep = sleep
        self._interval = interval

    def _state(self) -> bool | None:
        """True: exited (or the pid names another process); False: running; None: unknown
        (the process cannot be read, so its identity cannot be checked)."""
        try:
            rec = self._sampler.process(self._target.pid)
        except NoSuchProcess:
            return True
        except (Error, OSError) as exc:
            log.debug("event=identity_unreadable pid=%d error=%s", self._target.pid, exc)
            return None
        if rec.start_time != self._target.start_time:
            return True
        return is_zombie(self._sampler.root, self._target.pid)

    def has_exited(self) -> bool:
        return self._state() is True

    def wait(self, timeout: float) -> bool:
        deadline = self._clock() + timeout
        while True:
            if self.has_exited():
                return True
            left = deadline - self._clock()
            if left <= 0:
                return False
            self._sleep(min(self._interval, left))

    def send(self, sig: int, pgid: int | None) -> None:
        state = self._state()
        if state is None:
            raise PermissionError(errno.EPERM, "cannot read the start time to verify identity")
        if state:
            raise ProcessLookupError(errno.ESRCH, "process exited or its pid was reused")
        if pgid is None:
            os.kill(self._target.pid, sig)
        else:
            os.killpg(pgid, sig)

    def close(self) -> None:
        pass


if sys.platform == "darwin":

    class _KqueueHandle(_PollingHandle):
        """macOS: a kqueue NOTE_EXIT watch says when the process exits (zombie included);
        the start time is still compared right before each ``kill(2)``."""

        def __init__(
            self,
            target: Target,
            sampler: Sampler,
            clock: Callable[[], float],
            sleep: Callable[[float], None],
            interval: float,
        ) -> None:
            super().__init__(target, sampler, clock, sleep, interval)
            self._kq = select.kqueue()
            self._exited = False
            watch = select.kevent(
                target.pid,
                filter=select.KQ_FILTER_PROC,
                flags=select.KQ_EV_ADD | select.KQ_EV_ONESHOT,
                fflags=select.KQ_NOTE_EXIT,
            )
            try:
                self._kq.control([watch], 0, 0)  # ESRCH -> ProcessLookupError: gone already
            except BaseException:
                self._kq.close()
                raise

        def wait(self, timeout: float) -> bool:
            if not self._exited:
                self._exited = bool(self._kq.control(None, 1, max(0.0, timeout)))
            return self._exited

        def _state(self) -> bool | None:
            return True if self.wait(0.0) else super()._state()

        def close(self) -> None:
            self._kq.close()


def _open_handle(
    target: Target,
    sampler: Sampler,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
    interval: float,
) -> _Handle:
    """A handle on the target's pid; raises ProcessLookupError when there is no such pid."""
    if sys.platform == "linux" and _USE_PIDFD:
        try:
            return _PidfdHandle(target.pid)
        except OSError as exc:
            if exc.errno not in (errno.ENOSYS, errno.EPERM, errno.EACCES):
                raise
            log.warning("event=pidfd_unavailable pid=%d error=%s fallback=start_time", target.pid,
                        exc)  # fmt: skip
    if sys.platform == "darwin":
        return _KqueueHandle(target, sampler, clock, sleep, interval)
    return _PollingHandle(target, sampler, clock, sleep, interval)


def _refusal(target: Target) -> str | None:
    """Why a target must never be signalled, or None (STYLE rule 15)."""
    if target.pid <= 1:
        return f"pid {target.pid} is never signalled"
    if target.pid == os.getpid():
        return "refusing to signal metalmem itself"
    if target.pid == os.getppid():
        return "refusing to signal metalmem's parent"
    if target.protected:
        return "target is protected"
    return None


def _group_to_signal(target: Target) -> int | None:
    """The process group to signal, or None to signal the process alone.

    Only a group the target leads (pgid == pid) is signalled: a target that runs in someone
    else's group (a shell's, a supervisor's, ours) shares it with processes that are not
    ours to stop.
    """
    if not target.stop.process_group:
        return None
    pgid = os.getpgid(target.pid)
    if pgid != target.pid or pgid == os.getpgrp():
        log.warning(
            "event=stop_group_skipped key=%s pid=%d pgid=%d reason=not_group_leader",
            target.key, target.pid, pgid,
        )  # fmt: skip
        return None
    return pgid


def _run_command(target: Target, command: tuple[str, ...], timeout: float) -> bool:
    """Run the target's stop command (no shell) for at most ``timeout`` s; True if it ran
    and exited 0. Its output goes to the log, not to our stdout."""
    try:
        done = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        log.warning("event=stop_command_timeout key=%s command=%r timeout=%.1f", target.key,
                    command, timeout)  # fmt: skip
        return True  # it ran for the whole grace period; escalation follows
    except OSError as exc:
        log.warning("event=stop_command_failed key=%s command=%r error=%s", target.key, command,
                    exc)  # fmt: skip
        return False
    if done.returncode != 0:
        log.warning(
            "event=stop_command_failed key=%s command=%r rc=%d stderr=%r", target.key, command,
            done.returncode, done.stderr[-500:].decode(errors="replace"),
        )  # fmt: skip
        return False
    return True


def stop(
    target: Target,
    *,
    sampler: Sampler,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    poll_interval: float = 0.05,
    kill_timeout: float = DEFAULT_KILL_TIMEOUT,
    gate: Callable[[Target], Refusal | None] | None = None,
) -> StopRecord:
    """Stop ``target`` gracefully, forcefully if it must, and only if it is still that process.

    Order: refuse pid <= 1, ourselves, our parent and protected targets (``denied``); open a
    handle on the pid and compare its start time with ``target.start_time`` (a mismatch or a
    missing process is ``already_gone`` and nothing is sent); send ``target.stop.signal``
    (SIGTERM) or run ``target.stop.command`` (for at most ``grace`` s; if it cannot run or
    fails, the signal is sent instead); wait until ``grace`` has passed since the call for the
    process to exit (``terminated``); else SIGKILL and wait up to ``kill_timeout`` s for the
    exit (``killed``, or ``failed``). ``PermissionError`` from any signal is ``denied``.

    With ``target.stop.process_group`` both signals go to the target's process group when the
    target leads it (pgid == pid), else to the process alone (logged). Only the leader's exit
    is awaited: members still running after the leader exits are not waited for (llama-swap
    does the same).

    ``gate`` (:meth:`metalmem.gate.SafetyGate.check`) is asked once the handle is verified,
    right before the first signal or command; a refusal sends nothing (``already_gone`` when
    the process is gone or another one, else ``denied``).

    ``clock`` is monotonic seconds; ``sleep`` and ``poll_interval`` pace waiting only where
    exit cannot be awaited on a file descriptor (Linux without pidfds). Never raises for the
    target's sake; a sampler that is closed raises ``ValueError``.
    """
    t0 = clock()
    steps: list[str] = []

    def done(result: StopResult, message: str) -> StopRecord:
        record = StopRecord(
            target.key, target.pid, target.start_time, result, tuple(steps), clock() - t0, message
        )
        level = {StopResult.DENIED: logging.WARNING, StopResult.FAILED: logging.ERROR}.get(
            result, logging.INFO
        )
        log.log(
            level,
            "event=stop key=%s pid=%d result=%s steps=%s duration=%.3f message=%r",
            target.key, target.pid, result, ",".join(steps) or "-", record.duration, message,
        )  # fmt: skip
        return record

    refusal = _refusal(target)
    if refusal is not None:
        return done(StopResult.DENIED, refusal)

    try:
        handle = _open_handle(target, sampler, clock, sleep, poll_interval)
    except ProcessLookupError:
        return done(StopResult.ALREADY_GONE, "no such process")
    except PermissionError as exc:
        return done(StopResult.DENIED, f"cannot watch the process: {exc}")
    try:
        try:
            current = sampler.process(target.pid)
        except NoSuchProcess:
            return done(StopResult.ALREADY_GONE, "no such process")
        except AccessDenied as exc:
            return done(StopResult.DENIED, f"cannot verify identity: {exc}")
        except (Error, OSError) as exc:
            return done(StopResult.FAILED, f"cannot verify identity: {exc}")
        if current.start_time != target.start_time:
            return done(
                StopResult.ALREADY_GONE,
                f"pid now names another process (start_time {current.start_time} != "
                f"{target.start_time}); not signalled",
            )
        if handle.has_exited():
            return done(StopResult.ALREADY_GONE, "process had exited (zombie)")
        verdict = gate(target) if gate is not None else None
        if verdict is not None:
            gone = verdict.reason in (SkipReason.GONE, SkipReason.IDENTITY_CHANGED)
            result = StopResult.ALREADY_GONE if gone else StopResult.DENIED
            return done(result, f"safety gate: {verdict.reason}: {verdict.detail}")
        if target.stop.unload is not None:
            return _unload(target, handle, sampler, clock, t0, kill_timeout, steps, done)
        return _escalate(target, handle, clock, t0, kill_timeout, steps, done)
    finally:
        handle.close()


def _unload(
    target: Target,
    handle: _Handle,
    sampler: Sampler,
    clock: Callable[[], float],
    t0: float,
    kill_timeout: float,
    steps: list[str],
    done: Callable[[StopResult, str], StopRecord],
) -> StopRecord:
    """The model-level stop (:func:`metalmem.unload.unload`) on a verified handle, with the
    signal path (a refused unload) and SIGKILL (an accepted one whose process outlived the
    grace) as its fallbacks; each fallback's message starts with the reason for it."""
    from .unload import unload

    def noting(note: str) -> Callable[[StopResult, str], StopRecord]:
        return lambda result, message: done(result, note + message)

    def signal_path(note: str) -> StopRecord:
        # The grace counts from the start of the stop, so the whole stop stays within
        # grace + kill_timeout (the watchdog's busy_until); the request took half at most.
        return _escalate(target, handle, clock, t0, kill_timeout, steps, noting(note))

    def kill(note: str) -> StopRecord:
        return _kill(handle, None, "", kill_timeout, steps, noting(note), StopResult.UNLOADED,
                     "SIGKILL")  # fmt: skip

    return unload(target, handle, sampler, clock, t0, steps, done, signal_path, kill)


def _escalate(
    target: Target,
    handle: _Handle,
    clock: Callable[[], float],
    t0: float,
    kill_timeout: float,
    steps: list[str],
    done: Callable[[StopResult, str], StopRecord],
) -> StopRecord:
    """TERM (or the command) -> grace -> KILL -> confirmed exit, on a verified handle."""
    method = target.stop
    grace = method.grace_seconds
    try:
        pgid = _group_to_signal(target)
    except ProcessLookupError:
        return done(StopResult.ALREADY_GONE, "process exited before it was signalled")
    except PermissionError as exc:
        return done(StopResult.DENIED, f"cannot read the process group: {exc}")
    prefix = "group:" if pgid is not None else ""

    def send(sig: int) -> None:
        handle.send(sig, pgid)
        steps.append(prefix + signal.Signals(sig).name)

    command = method.command_for(target.pid)
    try:
        ran = False
        if command is not None:
            steps.append("command")
            ran = _run_command(target, command, grace)
        if not ran:
            send(method.signal)
    except ProcessLookupError:
        if steps:  # only "command" ran: the process went away with it
            return done(StopResult.TERMINATED, "exited during the stop command")
        return done(StopResult.ALREADY_GONE, "process exited before it was signalled")
    except PermissionError as exc:
        return done(StopResult.DENIED, f"signal refused: {exc}")

    if handle.wait(max(0.0, t0 + grace - clock())):
        return done(StopResult.TERMINATED, f"exited within the {grace:g} s grace period")

    return _kill(handle, pgid, prefix, kill_timeout, steps, done, StopResult.TERMINATED,
                 f"still running after {grace:g} s; SIGKILL")  # fmt: skip


def _kill(
    handle: _Handle,
    pgid: int | None,
    prefix: str,
    kill_timeout: float,
    steps: list[str],
    done: Callable[[StopResult, str], StopRecord],
    gone: StopResult,
    killed: str,
) -> StopRecord:
    """SIGKILL and a confirmed exit, the last step of every stop; ``gone`` is the result when
    the process exited just before it (the earlier step's success)."""
    try:
        handle.send(signal.SIGKILL, pgid)
    except ProcessLookupError:
        return done(gone, "exited at the end of the grace period")
    except PermissionError as exc:
        return done(StopResult.DENIED, f"SIGKILL refused: {exc}")
    steps.append(prefix + "SIGKILL")
    if handle.wait(kill_timeout):
        return done(StopResult.KILLED, killed)
    return done(StopResult.FAILED, f"still running {kill_timeout:g} s after SIGKILL")


class Reclaim(NamedTuple):
    """What :func:`wait_for_reclaim` saw: the largest rise of ``available`` over the baseline
    (bytes, >= 0) and whether it reached the goal before the timeout."""

    reclaimed: int
    is_settled: bool


def wait_for_reclaim(
    sampler: Sampler,
    baseline_available: int,
    footprint: int | None,
    *,
    share: float = 0.5,
    settle_timeout: float = 30.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    interval: float = 0.25,
) -> Reclaim:
    """Re-sample until ``available`` rose by ``share`` of the victim's ``footprint`` over
    ``baseline_available`` (the value sampled before the stop), or ``settle_timeout`` passed.

    Exit is not memory returned (earlyoom #309; Ollama waits for 80 % of its estimate): the
    next eviction decision must see the effect of this one. A ``footprint`` of ``None`` or 0
    sets no goal (settled at the first sample). If the sampler cannot tell ``available``
    (``None``), the whole timeout is waited and nothing is counted as reclaimed. Sampler errors
    propagate. ``clock``/``sleep`` are injectable for tests; the first sample is immediate.
    """
    if not 0 < share <= 1:
        raise ValueError(f"share: must be in (0, 1], got {share!r}")
    if not settle_timeout >= 0:
        raise ValueError(f"settle_timeout: must be >= 0 seconds, got {settle_timeout!r}")
    if not interval > 0:
        raise ValueError(f"interval: must be > 0 seconds, got {interval!r}")
    goal = int(share * footprint) if footprint else 0
    deadline = clock() + settle_timeout
    best = 0
    while True:
        available = sampler.system().available
        if available is not None:
            best = max(best, available - baseline_available)
            if best >= goal:
                return Reclaim(best, True)
        left = deadline - clock()
        if left <= 0:
            log.warning(
                "event=reclaim_timeout reclaimed=%d goal=%d timeout=%.1f", best, goal,
                settle_timeout,
            )  # fmt: skip
            return Reclaim(best, False)
        sleep(min(interval, left))
