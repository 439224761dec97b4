"""The loop: wait (timer | pressure event) -> sample -> assess -> notify -> publish.

One thread owns the loop (STYLE rule 13). A pressure event or ``stop()`` only wakes it; nothing
else runs a tick. Each tick publishes an immutable :class:`State` by replacing one reference,
so readers (metrics, HTTP, Kubernetes) never take a lock or wait for the loop (rule 14).
Listeners run on a separate notifier thread behind a bounded queue: a slow or failing listener
never delays sampling; a failure is logged and counted.

The loop's parts live beside it: :mod:`metalmem.state` (the State, its records, Listeners),
:mod:`metalmem.evictor` (plan, gate, block, stop, settle), :mod:`metalmem.blocks` (respawn
blocks), :mod:`metalmem.notifier` (the notifier thread), :mod:`metalmem.cadence` (the next
wait) and :mod:`metalmem.eventarm` (the event source's thresholds). Their names that callers
used from here are re-exported.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import os
import selectors
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from .blocks import RespawnBlocks
from .cadence import Cadence
from .durations import SampleDurations
from .errors import Error, NoSuchProcess
from .eventarm import Arming
from .eviction import EvictionMode, Planner
from .evictor import PUBLISH_TIMEOUT, Evictor, InFlight, Stopper
from .history import Ring
from .level import Level
from .limits import MAX_INTERVAL, check_duration
from .notifier import Dispatch
from .pressure import RECLAIM_SECONDS, Assessment, Classifier
from .procstate import is_zombie
from .sampler import ProcessMemory, Sampler, SystemMemory
from .state import EvictionRecord, HistoryPoint, Listeners, SkipRecord, State, TargetLike
from .targets import Target

log = logging.getLogger(__name__)

__all__ = [
    "PUBLISH_TIMEOUT",
    "EventSource",
    "EvictionRecord",
    "HistoryPoint",
    "Listeners",
    "RespawnBlocks",
    "SkipRecord",
    "State",
    "Stopper",
    "TargetLike",
    "Watchdog",
]


class EventSource(Protocol):
    """A readable fd that signals OS pressure (:class:`metalmem.PressureEvents`)."""

    def fileno(self) -> int: ...

    def read(self) -> Level | None: ...

    def close(self) -> None: ...


class Watchdog:
    """Samples the host and the targets' processes, assesses pressure, tells listeners.

    ``targets`` is a sequence or a callable returning the current managed targets (re-read
    every tick, so discovery can change it). ``interval`` is the normal wait between ticks;
    under pressure the wait shortens down to ``min_interval`` (see :meth:`next_wait`).
    ``events`` (optional) wakes the loop at once when the OS signals pressure; if it fails,
    the loop logs it once and goes on polling. ``stopper`` stops a victim (default:
    :func:`metalmem.process.stop`); whichever it is, :attr:`gate` (the safety gate) checks the
    victim right before it is called, and the default stopper asks the gate again right
    before its first signal. ``adopted`` returns the targets as the tracker adopted them, for
    the gate (default: the targets of the latest tick). ``durations`` (optional) counts every
    tick's duration, on the loop thread. ``clock`` is injectable for tests.
    """

    def __init__(
        self,
        sampler: Sampler,
        classifier: Classifier,
        targets: Sequence[TargetLike] | Callable[[], Sequence[TargetLike]] = (),
        *,
        interval: float = 2.0,
        min_interval: float = 0.1,
        events: EventSource | None = None,
        history: int = 300,
        listeners: Listeners | None = None,
        queue_size: int = 1000,
        planner: Planner | None = None,
        state_dir: str | None = None,
        stopper: Stopper | None = None,
        adopted: Callable[[], Sequence[Target]] | None = None,
        durations: SampleDurations | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if interval <= 0 or min_interval <= 0 or min_interval > interval:
            raise ValueError("need 0 < min_interval <= interval")
        check_duration("interval", interval, maximum=MAX_INTERVAL, open_min=True)
        self.sampler = sampler
        self.classifier = classifier
        self._targets = targets
        self.interval = interval
        self.min_interval = min_interval
        self.listeners = listeners or Listeners()
        # Observed on this thread: a listener would wake the notifier every tick (issue 15).
        self.durations = durations
        self._events = events
        self._clock = clock
        self._history: Ring[HistoryPoint] = Ring(history)
        self._counters: dict[str, int] = collections.defaultdict(int)
        self._counter_lock = threading.Lock()
        self._stop = threading.Event()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._thread: threading.Thread | None = None
        self._dispatch = Dispatch(self.listeners, self._count, queue_size)
        self._last_error: str | None = None
        self._arming = Arming()
        self._cadence = Cadence()
        self._level = Level.NORMAL
        self.planner = planner
        self._ticked: Sequence[TargetLike] = ()  # the latest tick's targets, for the gate
        self._evictor = Evictor(
            sampler, classifier, planner, self.listeners,
            post=self._dispatch.post_all, barrier=self._dispatch.barrier, wake=self._wake_stopped,
            adopted=adopted if adopted is not None else self._ticked_targets,
            clock=clock, state_dir=state_dir, stopper=stopper,
        )  # fmt: skip
        self.gate = self._evictor.gate
        self._state = State.initial(
            clock(), interval, events=events is not None, mode=self.mode,
            blocked=self._evictor.blocks.keys(),
        )  # fmt: skip

    # --- readers ----------------------------------------------------------------------------
    @property
    def state(self) -> State:
        """The latest snapshot; safe to read from any thread without a lock."""
        return self._state

    @property
    def mode(self) -> EvictionMode:
        """observe (no planner, or the policy says so), dry-run or enforce."""
        return self._evictor.mode

    def is_blocked(self, key: str) -> bool:
        """Whether ``key`` was evicted and must not be respawned yet (for host agents)."""
        return key in self._evictor.blocks

    @property
    def heartbeat(self) -> float:
        """Monotonic time of the last completed tick (the start time before the first)."""
        return self._state.heartbeat

    def _count(self, name: str, n: int = 1) -> None:
        with self._counter_lock:
            self._counters[name] += n

    # --- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        """Start the loop thread (and the notifier thread)."""
        if self._thread is not None:
            raise RuntimeError("Watchdog already started")
        self._dispatch.start()
        self._thread = threading.Thread(target=self._run, name="metalmem-watchdog", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 1.0) -> None:
        """Stop the loop; returns within ``timeout`` seconds (a tick in flight completes)."""
        self._stop.set()
        with contextlib.suppress(BlockingIOError):  # a wake-up is already pending
            os.write(self._wake_w, b"x")
        deadline = time.monotonic() + timeout
        if self._thread is not None:
            self._thread.join(timeout)
        flight = self._evictor.inflight
        if flight is not None and flight.thread is not None:
            flight.thread.join(max(0.0, deadline - time.monotonic()))  # let the grace finish
            if self._thread is None or not self._thread.is_alive():
                self._evictor.collect()
        self._dispatch.close(max(0.1, deadline - time.monotonic()))
        if self._thread is None or not self._thread.is_alive():
            for fd in (self._wake_r, self._wake_w):
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._wake_r = self._wake_w = -1
            stopping = flight is not None and flight.thread is not None and flight.thread.is_alive()
            if not stopping:
                self._evictor.close()  # the stop path's own Sampler (an agent restarts)

    def __enter__(self) -> Watchdog:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- the loop ---------------------------------------------------------------------------
    def next_wait(self, assessment: Assessment | None, system: SystemMemory | None = None) -> float:
        """How long to wait before the next tick (:meth:`metalmem.cadence.Cadence.next_wait`):
        ``interval`` at NORMAL, shorter as pressure rises and headroom shrinks."""
        return self._cadence.next_wait(
            assessment, system, interval=self.interval, min_interval=self.min_interval,
            critical_available=self.classifier.policy.critical_available,
        )  # fmt: skip

    def _note_fall(self, system: SystemMemory) -> None:
        self._cadence.note(system)

    def _current_targets(self) -> tuple[TargetLike, ...]:
        t = self._targets
        return tuple(t() if callable(t) else t)

    def tick(self) -> State:
        """Run one sample -> assess -> publish step on the calling thread; returns the State.

        The loop thread calls this; tests and benchmarks may call it directly on a Watchdog
        that was not started.
        """
        t0 = time.perf_counter()
        now = self._clock()
        try:
            system = self.sampler.system()
            targets = self._current_targets()
            by_pid = self.sampler.processes(t.pid for t in targets) if targets else {}
        except (Error, OSError) as exc:
            self._count("sample_errors")
            cause = f"{type(exc).__name__}: {exc}"
            if cause != self._last_error:
                log.warning("event=sample_failed error=%r", cause)
                self._last_error = cause
            self._publish_heartbeat(now)
            return self._state
        if self._last_error is not None:
            log.info("event=sample_recovered")
            self._last_error = None
        self._arm_events(system)
        self._note_fall(system)
        if self.planner is not None:
            self.classifier.stop_seconds = self.planner.policy.grace + RECLAIM_SECONDS
        assessment = self.classifier.assess(system, now)
        processes = {t.key: self._live(t, by_pid[t.pid]) for t in targets}
        self._ticked = targets
        plan = None
        flight = None
        if self.planner is not None:
            self._evictor.collect()
            plan, chosen = self._evictor.plan(assessment, system, processes, targets, now)
            if chosen is not None:
                flight = self._evictor.begin(chosen, assessment, system, processes)
        self._history.append(HistoryPoint(now, assessment.level, system.available))
        old = self._level
        self._level = assessment.level
        self._count("ticks")
        duration = time.perf_counter() - t0
        if self.durations is not None:
            self.durations.observe(duration)
        with self._counter_lock:
            counters = dict(self._counters)
        state = State(
            seq=self._state.seq + 1,
            system=system,
            processes=processes,
            targets=targets,
            assessment=assessment,
            history=self._history.view(),
            counters=counters,
            heartbeat=now,
            started_at=self._state.started_at,
            interval=self.next_wait(assessment, system),
            sample_duration=duration,
            cpu_seconds=time.thread_time(),
            events=self._events is not None,
            mode=self.mode,
            plan=plan,
            **self._evictor.fields(),
        )
        # Publish, then act: the State, the level change and "evicting" go out before the
        # stop's first signal (the stop thread waits for the notifier to deliver them).
        self._state = state
        self._dispatch.published(state, assessment, old)
        if flight is not None:
            self._launch(flight)
        return self._state

    def _arm_events(self, system: SystemMemory) -> None:
        self._arming.update(self._events, system, self.classifier.policy, self.interval)

    def _live(
        self, target: TargetLike, sample: ProcessMemory | Error | OSError
    ) -> ProcessMemory | Error | OSError:
        """The sample, or NoSuchProcess for a zombie or an identity already stopped. A zombie
        has no resident pages, so only such samples cost the extra read of its state."""
        if not isinstance(sample, ProcessMemory):
            return sample
        if sample.start_time is not None and (target.pid, sample.start_time) in self._evictor.spent:
            return NoSuchProcess("already stopped", pid=target.pid)
        if not sample.rss and is_zombie(self.sampler.root, target.pid):
            return NoSuchProcess("exited (zombie, not yet reaped)", pid=target.pid)
        return sample

    def _ticked_targets(self) -> tuple[Target, ...]:
        """The managed targets of the latest tick (filtered only when the gate asks)."""
        return tuple(t for t in self._ticked if isinstance(t, Target))

    # --- eviction (metalmem.evictor) ---------------------------------------------------------
    def _launch(self, flight: InFlight) -> None:
        """Say "evicting", then stop: on its own thread while the loop runs (the loop keeps
        sampling and publishing during the whole grace), inline for a directly ticked
        Watchdog (tests, benchmarks), which then sees the outcome in the State it returns."""
        self._evictor.announce(flight)
        if self._thread is None or threading.current_thread() is not self._thread:
            self._evictor.run_stop(flight)
            self._evictor.collect()
            self._republish()
            return
        flight.thread = threading.Thread(
            target=self._evictor.run_stop, args=(flight,), name="metalmem-stop", daemon=True
        )
        flight.thread.start()

    def _republish(self) -> None:
        """The State again after a stop ended inside the tick that started it."""
        self._state = dataclasses.replace(self._state, **self._evictor.fields())

    def _wake_stopped(self) -> None:
        """Wake the loop from the stop thread, to collect the stop's outcome."""
        with contextlib.suppress(OSError, ValueError):
            os.write(self._wake_w, b"s")

    def _publish_heartbeat(self, now: float) -> None:
        with self._counter_lock:
            counters = dict(self._counters)
        self._state = dataclasses.replace(self._state, heartbeat=now, counters=counters)

    @property
    def failed(self) -> str | None:
        """Why the loop thread died, or ``None`` while it runs (or never started)."""
        return self._state.failed

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # the loop must never end silently (issue 13)
            log.critical("event=loop_died error=%r action=exit", exc, exc_info=True)
            self._state = dataclasses.replace(self._state, failed=f"{type(exc).__name__}: {exc}")
            for fn in self.listeners.on_fatal:
                with contextlib.suppress(Exception):
                    fn(exc)

    def _loop(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        if self._events is not None:
            try:
                sel.register(self._events.fileno(), selectors.EVENT_READ, "events")
            except (OSError, ValueError) as exc:
                log.warning("event=pressure_events_unavailable error=%r fallback=polling", exc)
                self._events = None
        try:
            while not self._stop.is_set():
                state = self.tick()
                ticked = self._clock()
                deadline = ticked + state.interval
                # The watch of available memory (host, cgroup v2) is polled here, on the tick's
                # own wake-ups where it is due no sooner: idle, one wake-up a tick (issue 15).
                self._poll_watch(ticked)
                while not self._stop.is_set():
                    now = self._clock()
                    if now >= deadline:
                        break
                    if self._arming.watch_at <= now:
                        if self._poll_watch(now):
                            deadline = min(deadline, ticked + self.min_interval)
                        continue
                    ready = sel.select(min(deadline, self._arming.watch_at) - now)
                    if any(key.data == "wake" for key, _ in ready):
                        with contextlib.suppress(BlockingIOError):
                            os.read(self._wake_r, 64)
                        flight = self._evictor.inflight
                        if flight is not None and flight.done.is_set():
                            deadline = min(deadline, ticked + self.min_interval)  # collect it
                    if any(key.data == "events" for key, _ in ready) and self._on_event(sel):
                        # At once, but at most one tick per min_interval: a storm of events
                        # (vmpressure under heavy reclaim) must not become a busy loop.
                        deadline = min(deadline, ticked + self.min_interval)
        finally:
            sel.close()

    def _poll_watch(self, now: float) -> bool:
        """Poll the reader-paced watch; True (counted) when available crossed a threshold."""
        changed = self._arming.poll(self._events, now)
        if changed:
            self._count("pressure_events")
        return changed

    def _on_event(self, sel: selectors.BaseSelector) -> bool:
        """Drain the pressure source; True when the loop should tick now."""
        assert self._events is not None
        try:
            level = self._events.read()
        except OSError as exc:
            log.warning("event=pressure_events_lost error=%r fallback=polling", exc)
            sel.unregister(self._events.fileno())
            self._events = None
            return False
        if level is None:
            return False
        self._count("pressure_events")
        log.debug("event=pressure_event level=%s", level.name)
        return True
