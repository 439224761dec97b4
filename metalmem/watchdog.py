"""The loop: wait (timer | pressure event) -> sample -> assess -> notify -> publish.

One thread owns the loop (STYLE rule 13). A pressure event or ``stop()`` only wakes it; nothing
else runs a tick. Each tick publishes an immutable :class:`State` by replacing one reference,
so readers (metrics, HTTP, Kubernetes) never take a lock or wait for the loop (rule 14).
Listeners run on a separate notifier thread behind a bounded queue: a slow or failing listener
never delays sampling; a failure is logged and counted.
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
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from .errors import Error, NoSuchProcess
from .eviction import EvictionMode, Plan, Planner, SkipReason
from .gate import Refusal, SafetyGate
from .history import Ring
from .level import Level
from .limits import MAX_INTERVAL, check_duration
from .pressure import RECLAIM_SECONDS, Assessment, Classifier
from .process import DEFAULT_KILL_TIMEOUT, StopRecord, StopResult, stop
from .procstate import is_zombie
from .sampler import ProcessMemory, Sampler, SystemMemory
from .statefile import StateFileError, read_state, write_state
from .targets import Target

log = logging.getLogger(__name__)

__all__ = [
    "EventSource",
    "EvictionRecord",
    "HistoryPoint",
    "Listeners",
    "RespawnBlocks",
    "SkipRecord",
    "State",
    "TargetLike",
    "Watchdog",
]


class TargetLike(Protocol):
    """What the loop needs of a managed target: a stable key and the pid to sample."""

    @property
    def key(self) -> str: ...

    @property
    def pid(self) -> int: ...


class EventSource(Protocol):
    """A readable fd that signals OS pressure (:class:`metalmem.PressureEvents`)."""

    def fileno(self) -> int: ...

    def read(self) -> Level | None: ...

    def close(self) -> None: ...


@dataclasses.dataclass(frozen=True, slots=True)
class HistoryPoint:
    """One tick, kept in a ring buffer for /memstats and the forecast's readers."""

    timestamp: float
    level: Level
    available: int | None


@dataclasses.dataclass(frozen=True, slots=True)
class EvictionRecord:
    """One eviction (or, in dry-run mode, one that would have happened).

    ``reason`` is the signal behind the CRITICAL assessment; ``reclaimed`` is how much
    ``available`` rose by the end of the settle phase (None while settling or in dry-run).
    """

    key: str
    pid: int
    priority: str
    reason: str
    footprint: int | None
    result: str
    reclaimed: int | None
    duration: float
    timestamp_unix: float
    message: str


@dataclasses.dataclass(frozen=True, slots=True)
class SkipRecord:
    """A change of the reason why a wanted eviction did not happen."""

    reason: SkipReason
    explanation: str
    timestamp_unix: float


class RespawnBlocks:
    """Keys of evicted targets that must not be respawned, persisted in ``state_dir``.

    A block is set *before* the stop (a controller cannot respawn in between, LLMKube) and
    cleared once NORMAL has held for the transition period. The file survives an agent
    restart; the NORMAL-held clock does not (monotonic time), so a restart re-waits one
    transition period: the conservative choice.
    """

    FILE = "respawn-blocks.json"

    def __init__(self, state_dir: str | None) -> None:
        self._path = os.path.join(state_dir, self.FILE) if state_dir else None
        self._lock = threading.Lock()
        loaded = read_state(self._path, _check_blocks)
        self._blocked: dict[str, dict[str, Any]] = dict(loaded or {})

    def keys(self) -> tuple[str, ...]:
        with self._lock:
            return tuple(sorted(self._blocked))

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._blocked

    def block(self, key: str, **info: Any) -> None:
        with self._lock:
            self._blocked[key] = {"since_unix": time.time(), **info}
        self.flush()

    def clear_key(self, key: str) -> None:
        with self._lock:
            found = self._blocked.pop(key, None)
        if found is not None:
            self.flush()

    def clear(self) -> tuple[str, ...]:
        with self._lock:
            cleared = tuple(sorted(self._blocked))
            self._blocked.clear()
        if cleared:
            self.flush()
        return cleared

    def flush(self) -> None:
        """Write the file atomically (temp file + rename); a failure is logged, not raised."""
        with self._lock:
            doc = {"version": 1, "blocked": dict(self._blocked)}
        write_state(self._path, doc)


def _check_blocks(doc: Any) -> dict[str, dict[str, Any]]:
    """``{"version": 1, "blocked": {key: {...}}}``: every entry an object under a string key."""
    if not isinstance(doc, dict) or not isinstance(doc.get("blocked", {}), dict):
        raise StateFileError('expected {"version": 1, "blocked": {KEY: {...}}}')
    blocked = doc.get("blocked", {})
    for key, value in blocked.items():
        if not isinstance(value, dict):
            raise StateFileError(f"blocked[{key!r}] is {type(value).__name__}, not an object")
    return {str(k): dict(v) for k, v in blocked.items()}


@dataclasses.dataclass(frozen=True, slots=True)
class _Settle:
    key: str
    baseline: int | None
    footprint: int | None
    deadline: float
    record: EvictionRecord


@dataclasses.dataclass(slots=True)
class _InFlight:
    """A stop that was decided and published; the stop thread fills in ``outcome``."""

    victim: Target
    footprint: int | None
    reason: str
    available: int | None  # when it was chosen: the settle phase's baseline
    blocked_before: bool
    started: float
    deadline: float  # the latest it can end: grace + the SIGKILL wait
    thread: threading.Thread | None = None
    outcome: StopRecord | Refusal | None = None
    done: threading.Event = dataclasses.field(default_factory=threading.Event)


# How long a stop waits for the listeners to have taken what the tick published (the level
# change, the State, "evicting") before its first signal. They only record (the Kubernetes
# reporter's writes are its worker's), so this is milliseconds unless a listener is stuck.
PUBLISH_TIMEOUT = 1.0
# The shortest wait the headroom bound may ask for (next_wait): a tick costs ~0.2 ms.
MIN_WAIT = 0.01
# How long the fastest fall seen bounds the wait: a model load an hour ago says nothing of now.
FALL_MEMORY = 600.0


@dataclasses.dataclass(frozen=True, slots=True)
class State:
    """An immutable snapshot of the loop, replaced (never mutated) after every tick.

    ``processes`` maps a target's key to its sample or the error for it; ``heartbeat`` is the
    monotonic time the loop last completed a tick; ``cpu_seconds`` is the loop thread's own CPU.
    """

    seq: int
    system: SystemMemory | None
    processes: Mapping[str, ProcessMemory | Error | OSError]
    targets: tuple[TargetLike, ...]
    assessment: Assessment | None
    history: Sequence[HistoryPoint]
    counters: Mapping[str, int]
    heartbeat: float
    started_at: float
    interval: float
    sample_duration: float
    cpu_seconds: float
    events: bool
    mode: EvictionMode = EvictionMode.OBSERVE
    plan: Plan | None = None
    blocked: tuple[str, ...] = ()
    settling: str | None = None
    evictions: tuple[EvictionRecord, ...] = ()
    skips: tuple[SkipRecord, ...] = ()
    eviction_counts: Mapping[tuple[str, str], int] = dataclasses.field(default_factory=dict)
    skip_counts: Mapping[str, int] = dataclasses.field(default_factory=dict)
    reclaimed_total: int = 0
    busy_until: float | None = None
    """While a stop is in flight: the latest monotonic time it can end (grace + SIGKILL wait).
    The loop keeps ticking meanwhile (the stop runs on its own thread)."""
    stopping: str | None = None
    """The key of the target whose stop is in flight, or ``None``."""
    failed: str | None = None
    """Set when the loop thread died of an unexpected error: health checks fail from then on
    and the agent exits non-zero so that its supervisor restarts it."""


LevelChange = Callable[[Level, Level, Assessment], None]

# How a victim is stopped: the signal path by default; the Kubernetes reporter substitutes one
# that suspends through the owning object first (metalmem.kube).
Stopper = Callable[[Target, Sampler], StopRecord]


@dataclasses.dataclass
class Listeners:
    """Callbacks, each called on the notifier thread, in registration order."""

    on_sample: list[Callable[[State], None]] = dataclasses.field(default_factory=list)
    on_assessment: list[Callable[[Assessment], None]] = dataclasses.field(default_factory=list)
    on_level_change: list[LevelChange] = dataclasses.field(default_factory=list)
    on_evicting: list[Callable[[EvictionRecord], None]] = dataclasses.field(default_factory=list)
    """A stop is about to start (result ``evicting``): delivered before its first signal."""
    on_eviction: list[Callable[[EvictionRecord], None]] = dataclasses.field(default_factory=list)
    on_skip: list[Callable[[SkipRecord], None]] = dataclasses.field(default_factory=list)
    on_unblock: list[Callable[[tuple[str, ...]], None]] = dataclasses.field(default_factory=list)
    on_fatal: list[Callable[[BaseException], None]] = dataclasses.field(default_factory=list)
    """Called on the dying loop thread itself (not the notifier) when the loop fails."""


class _Notifier:
    """Runs listener calls off the loop thread; a full queue drops its oldest call (counted)."""

    def __init__(self, maxlen: int, on_error: Callable[[], None], on_drop: Callable[[], None]):
        self._queue: collections.deque[tuple[Callable[..., None], tuple[Any, ...]]] = (
            collections.deque()
        )
        self._maxlen = maxlen
        self._cond = threading.Condition()
        self._closed = False
        self._on_error = on_error
        self._on_drop = on_drop
        self._thread = threading.Thread(target=self._run, name="metalmem-notify", daemon=True)
        self._thread.start()

    def post(self, fn: Callable[..., None], *args: Any) -> None:
        with self._cond:
            if len(self._queue) >= self._maxlen:
                self._queue.popleft()
                self._on_drop()
            self._queue.append((fn, args))
            self._cond.notify()

    def barrier(self, timeout: float) -> bool:
        """Wait until every call posted before this one has run; False on timeout."""
        done = threading.Event()
        self.post(done.set)
        return done.wait(timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return
                fn, args = self._queue.popleft()
            try:
                fn(*args)
            except Exception:
                self._on_error()
                log.exception("event=listener_error listener=%s", getattr(fn, "__name__", fn))

    def close(self, timeout: float) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout)


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
    the gate (default: the targets of the latest tick). ``clock`` is injectable for tests.
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
        self._events = events
        self._clock = clock
        self._history: Ring[HistoryPoint] = Ring(history)
        self._counters: dict[str, int] = collections.defaultdict(int)
        self._counter_lock = threading.Lock()
        self._queue_size = queue_size
        self._stop = threading.Event()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._thread: threading.Thread | None = None
        self._notifier: _Notifier | None = None
        self._last_error: str | None = None
        self._armed: tuple[int, float, float, int] | None = None
        self._max_fall = 0.0  # the fastest fall of available memory seen, bytes per second
        self._max_fall_at = 0.0  # when it was seen
        self._last_available: tuple[float, int] | None = None
        self._level = Level.NORMAL
        self.planner = planner
        self._stopper: Stopper = stopper or self._signal_stop
        self._blocks = RespawnBlocks(state_dir)
        self._ticked: Sequence[TargetLike] = ()  # the latest tick's targets, for the gate
        # Identities whose stop found them gone already: never planned again (a zombie used
        # to be "evicted" every tick, issue 13). Bounded: one entry per exited target.
        self._spent: collections.deque[tuple[int, float]] = collections.deque(maxlen=256)
        # Stops run on their own thread while the loop samples on: they get a Sampler of their
        # own (a Sampler is not thread-safe), and so does the gate that checks them.
        self._stop_sampler = (
            Sampler(sampler.root, sampler.scope) if isinstance(sampler, Sampler) else sampler
        )
        self._inflight: _InFlight | None = None
        self.gate = SafetyGate(
            self._stop_sampler,
            adopted if adopted is not None else self._ticked_targets,
            lambda: self.planner.policy.floor if self.planner is not None else 1,
        )
        self._eviction_times: collections.deque[float] = collections.deque(maxlen=1000)
        self._evictions: collections.deque[EvictionRecord] = collections.deque(maxlen=20)
        self._skips: collections.deque[SkipRecord] = collections.deque(maxlen=20)
        self._eviction_counts: collections.Counter[tuple[str, str]] = collections.Counter()
        self._skip_counts: collections.Counter[str] = collections.Counter()
        self._reclaimed_total = 0
        self._settle: _Settle | None = None
        self._last_skip: SkipReason | None = None
        self._last_dry_run: str | None = None
        started = clock()
        self._state = State(
            seq=0,
            system=None,
            processes={},
            targets=(),
            assessment=None,
            history=(),
            counters={},
            heartbeat=started,
            started_at=started,
            interval=interval,
            sample_duration=0.0,
            cpu_seconds=0.0,
            events=events is not None,
            mode=self.mode,
            blocked=self._blocks.keys(),
        )

    # --- readers ----------------------------------------------------------------------------
    @property
    def state(self) -> State:
        """The latest snapshot; safe to read from any thread without a lock."""
        return self._state

    @property
    def mode(self) -> EvictionMode:
        """observe (no planner, or the policy says so), dry-run or enforce."""
        return self.planner.policy.mode if self.planner is not None else EvictionMode.OBSERVE

    def is_blocked(self, key: str) -> bool:
        """Whether ``key`` was evicted and must not be respawned yet (for host agents)."""
        return key in self._blocks

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
        self._notifier = _Notifier(
            self._queue_size,
            on_error=lambda: self._count("listener_errors"),
            on_drop=lambda: self._count("listener_drops"),
        )
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
        flight = self._inflight
        if flight is not None and flight.thread is not None:
            flight.thread.join(max(0.0, deadline - time.monotonic()))  # let the grace finish
            if self._thread is None or not self._thread.is_alive():
                self._collect_stop()
        if self._notifier is not None:
            self._notifier.close(max(0.1, deadline - time.monotonic()))
        if self._thread is None or not self._thread.is_alive():
            for fd in (self._wake_r, self._wake_w):
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._wake_r = self._wake_w = -1
            stopping = flight is not None and flight.thread is not None and flight.thread.is_alive()
            if self._stop_sampler is not self.sampler and not stopping:
                self._stop_sampler.close()  # its own, opened in __init__ (an agent restarts)

    def __enter__(self) -> Watchdog:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- the loop ---------------------------------------------------------------------------
    def next_wait(self, assessment: Assessment | None, system: SystemMemory | None = None) -> float:
        """How long to wait before the next tick: shorter as headroom shrinks (earlyoom).

        NORMAL waits ``interval``; WARNING a quarter of it; CRITICAL ``min_interval``. The
        physical bound comes next: the headroom above the critical threshold lasts
        ``headroom / rate`` at the fastest fall of available memory seen so far, and the wait
        is at most half of that, so at least two samples land before it could be gone
        (earlyoom's sleep_time_ms with a measured fill rate instead of a guessed one). A
        forecast of the critical threshold within ten intervals also shortens the wait to a
        tenth of the forecast. Always clamped to [min_interval, interval].
        """
        if assessment is None:
            return self.interval
        wait = {Level.NORMAL: self.interval, Level.WARNING: self.interval / 4}.get(
            assessment.level, self.min_interval
        )
        floor = self.min_interval
        fall = self._max_fall if system is not None else 0.0
        if fall > 0 and system is not None and system.available is not None:
            headroom = system.available - self.classifier.policy.critical_available * (
                system.total or 0
            )
            if headroom > 0:  # below the threshold the level itself sets the pace
                bound = headroom / fall / 2
                wait = min(wait, bound)
                # It may go below min_interval (10 ms at least): at 2 GiB/s, 100 MiB of
                # headroom last 50 ms.
                floor = max(MIN_WAIT, min(floor, bound))
        forecast = assessment.forecast_seconds
        if forecast is not None and forecast < 10 * self.interval:
            wait = min(wait, forecast / 10)
        return max(floor, min(self.interval, wait))

    def _note_fall(self, system: SystemMemory) -> None:
        """Keep the fastest fall of available memory seen in the last :data:`FALL_MEMORY`
        seconds (bytes per second), from samples at least 50 ms apart (closer ones turn a
        few pages of noise into a huge rate)."""
        available, at = system.available, system.timestamp
        last = self._last_available
        if available is None:
            return
        if at - self._max_fall_at > FALL_MEMORY:
            self._max_fall = 0.0
        if last is None or at - last[0] >= 0.05:
            if last is not None and available < last[1] and at > last[0]:
                rate = (last[1] - available) / (at - last[0])
                if rate >= self._max_fall:
                    self._max_fall, self._max_fall_at = rate, at
            self._last_available = (at, available)

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
            self._collect_stop()
            plan, chosen = self._plan_and_act(assessment, system, processes, targets, now)
            if chosen is not None:
                flight = self._begin_evict(chosen, assessment, system, processes)
        self._history.append(HistoryPoint(now, assessment.level, system.available))
        old = self._level
        self._level = assessment.level
        self._count("ticks")
        duration = time.perf_counter() - t0
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
            **self._eviction_fields(),
        )
        # Publish, then act: the State, the level change and "evicting" go out before the
        # stop's first signal (the stop thread waits for the notifier to deliver them).
        self._state = state
        self._notify(state, assessment, old)
        if flight is not None:
            self._launch(flight)
        return self._state

    def _arm_events(self, system: SystemMemory) -> None:
        """Give the event source the available-memory thresholds (bytes) of this scope, so
        that it wakes the loop as they are crossed; again whenever total or the policy
        changes. A source that cannot take them (macOS, a test's) is left as it is."""
        arm = getattr(self._events, "arm", None)
        if arm is None or not system.total:
            return
        policy = self.classifier.policy
        # A limited cgroup's sources watch usage (limit - usage, "free"), which counts the
        # reclaimable cache that available leaves out: arm that much lower, so the wake-up
        # comes as available itself crosses (re-armed when the cache moves by 8 MiB).
        cache = 0
        if system.limited and system.free is not None and system.available is not None:
            cache = max(0, system.available - system.free) >> 23 << 23
        key = (system.total, policy.warning_available, policy.critical_available, cache)
        if key == self._armed:
            return
        self._armed = key
        warning = max(0, int(policy.warning_available * system.total) - cache)
        critical = max(0, int(policy.critical_available * system.total) - cache)
        try:
            arm(warning, critical, min_period=0.01, max_period=min(1.0, self.interval))
        except (Error, OSError, ValueError) as exc:
            log.info("event=event_thresholds_unavailable error=%r", exc)
            return
        log.info(
            "event=event_thresholds warning_available=%d critical_available=%d sources=%s",
            warning, critical, ",".join(sorted(getattr(self._events, "sources", ()))) or "-",
        )  # fmt: skip

    def _live(
        self, target: TargetLike, sample: ProcessMemory | Error | OSError
    ) -> ProcessMemory | Error | OSError:
        """The sample, or NoSuchProcess for a zombie or an identity already stopped. A zombie
        has no resident pages, so only such samples cost the extra read of its state."""
        if not isinstance(sample, ProcessMemory):
            return sample
        if sample.start_time is not None and (target.pid, sample.start_time) in self._spent:
            return NoSuchProcess("already stopped", pid=target.pid)
        if not sample.rss and is_zombie(self.sampler.root, target.pid):
            return NoSuchProcess("exited (zombie, not yet reaped)", pid=target.pid)
        return sample

    def _ticked_targets(self) -> tuple[Target, ...]:
        """The managed targets of the latest tick (filtered only when the gate asks)."""
        return tuple(t for t in self._ticked if isinstance(t, Target))

    def _signal_stop(self, target: Target, sampler: Sampler) -> StopRecord:
        return stop(target, sampler=sampler, gate=self.gate.check)

    # --- eviction ---------------------------------------------------------------------------
    def _plan_and_act(
        self,
        assessment: Assessment,
        system: SystemMemory,
        processes: Mapping[str, ProcessMemory | Error | OSError],
        targets: Sequence[TargetLike],
        now: float,
    ) -> tuple[Plan | None, tuple[Target, SystemMemory] | None]:
        """Settle, unblock, plan; name at most one victim to stop (kubelet: one per pass),
        with the fresh sample it was chosen on. A stop in flight holds further evictions,
        as the settle phase does."""
        assert self.planner is not None
        managed = [t for t in targets if isinstance(t, Target)]
        self._check_settle(system, now)
        self._check_unblock(assessment, now)
        if assessment.level != Level.CRITICAL:
            # Nothing to plan below CRITICAL; ranking costs ~40 us at 16 targets (measured).
            self._last_skip = None
            self._last_dry_run = None
            return None, None
        plan = self.planner.plan(
            assessment,
            system,
            processes,
            managed,
            now,
            evictions=tuple(self._eviction_times),
            settling=self._settle is not None or self._inflight is not None,
        )
        # Wanted means the current sample itself says CRITICAL: while the reported level is
        # held up by hysteresis after a recovery, nothing is wanted and nothing is skipped.
        wanted = assessment.raw_level == Level.CRITICAL
        if not wanted:
            self._last_skip = None
            self._last_dry_run = None
            return plan, None
        if not plan.victims:
            self._last_dry_run = None
            if not wanted or plan.skip_reason is None:
                self._last_skip = None
            elif plan.skip_reason != self._last_skip:
                self._record_skip(plan)
            return plan, None
        self._last_skip = None
        victim = plan.victims[0]
        if self.mode == EvictionMode.DRY_RUN:
            if victim.key != self._last_dry_run:
                self._last_dry_run = victim.key
                self._record_dry_run(victim, plan, assessment, processes)
            return plan, None
        # Check again before acting (earlyoom): choosing took time and memory may be back.
        fresh = self.sampler.system()
        recheck = self.planner.plan(
            assessment, fresh, processes, managed, now, evictions=tuple(self._eviction_times)
        )
        if not recheck.victims:
            log.info("event=evict_cancelled reason=recovered_before_acting")
            return recheck, None
        return recheck, (recheck.victims[0], fresh)

    def _footprint(
        self, key: str, processes: Mapping[str, ProcessMemory | Error | OSError]
    ) -> int | None:
        p = processes.get(key)
        return p.footprint if isinstance(p, ProcessMemory) else None

    def _record_skip(self, plan: Plan) -> None:
        assert plan.skip_reason is not None
        self._last_skip = plan.skip_reason
        self._skip_counts[plan.skip_reason.value] += 1
        rec = SkipRecord(plan.skip_reason, plan.explanation, time.time())
        self._skips.append(rec)
        log.warning("event=eviction_skipped reason=%s detail=%r", rec.reason, rec.explanation)
        self._post_all(self.listeners.on_skip, rec)

    def _record_refusal(self, refusal: Refusal) -> None:
        """A stop the safety gate refused: a skip like the planner's, once per change."""
        if refusal.reason == self._last_skip:
            return
        self._last_skip = refusal.reason
        self._skip_counts[refusal.reason.value] += 1
        rec = SkipRecord(refusal.reason, f"safety gate: {refusal.detail}", time.time())
        self._skips.append(rec)
        log.warning("event=eviction_skipped reason=%s detail=%r", rec.reason, rec.explanation)
        self._post_all(self.listeners.on_skip, rec)

    def _record_dry_run(
        self,
        victim: Target,
        plan: Plan,
        assessment: Assessment,
        processes: Mapping[str, ProcessMemory | Error | OSError],
    ) -> None:
        reason = assessment.top_reason.signal.value if assessment.top_reason else "-"
        rec = EvictionRecord(
            victim.key,
            victim.pid,
            victim.priority.value,
            reason,
            self._footprint(victim.key, processes),
            "dry-run",
            None,
            0.0,
            time.time(),
            plan.explanation,
        )
        self._eviction_counts[(reason, "dry-run")] += 1
        self._evictions.append(rec)
        log.warning(
            "event=would_evict key=%s pid=%d detail=%r", victim.key, victim.pid, plan.explanation
        )
        self._post_all(self.listeners.on_eviction, rec)

    def _begin_evict(
        self,
        chosen: tuple[Target, SystemMemory],
        assessment: Assessment,
        system: SystemMemory,
        processes: Mapping[str, ProcessMemory | Error | OSError],
    ) -> _InFlight | None:
        """Gate and block the victim; the stop itself starts once this tick is published."""
        victim, fresh = chosen
        footprint = self._footprint(victim.key, processes)
        reason = assessment.top_reason.signal.value if assessment.top_reason else "-"
        if self.planner is not None:
            victim = dataclasses.replace(
                victim, stop=victim.stop.with_default_grace(self.planner.policy.grace)
            )
        refusal = self.gate.check(victim)
        if refusal is not None:
            self._record_refusal(refusal)
            return None
        # Block first, so nothing can respawn it while it stops (LLMKube sets it before too).
        # A block that was there before this stop (an earlier victim under the same key) is
        # never cleared by this one's outcome.
        blocked_before = victim.key in self._blocks
        self._blocks.block(victim.key, pid=victim.pid, footprint=footprint, reason=reason)
        now = self._clock()
        self._inflight = _InFlight(
            victim, footprint, reason, fresh.available, blocked_before, now,
            now + victim.stop.grace_seconds + DEFAULT_KILL_TIMEOUT,
        )  # fmt: skip
        log.warning(
            "event=evict key=%s pid=%d priority=%s footprint=%s reason=%s",
            victim.key, victim.pid, victim.priority.value, footprint, reason,
        )  # fmt: skip
        return self._inflight

    def _launch(self, flight: _InFlight) -> None:
        """Say "evicting", then stop: on its own thread while the loop runs (the loop keeps
        sampling and publishing during the whole grace), inline for a directly ticked
        Watchdog (tests, benchmarks), which then sees the outcome in the State it returns."""
        victim = flight.victim
        rec = EvictionRecord(
            victim.key, victim.pid, victim.priority.value, flight.reason, flight.footprint,
            "evicting", None, 0.0, time.time(), "stop starting",
        )  # fmt: skip
        self._post_all(self.listeners.on_evicting, rec)
        if self._thread is None or threading.current_thread() is not self._thread:
            self._run_stop(flight)
            self._collect_stop()
            self._republish()
            return
        flight.thread = threading.Thread(
            target=self._run_stop, args=(flight,), name="metalmem-stop", daemon=True
        )
        flight.thread.start()

    def _run_stop(self, flight: _InFlight) -> None:
        """The stop: after the notifier delivered what this tick published, the gate once
        more, then the stopper (which asks the gate again right before its first signal)."""
        try:
            if self._notifier is not None:
                self._notifier.barrier(PUBLISH_TIMEOUT)
            refusal = self.gate.check(flight.victim)
            flight.outcome = (
                refusal if refusal is not None else self._stopper(flight.victim, self._stop_sampler)
            )
        except Exception as exc:  # the stopper must not take the loop down with it
            log.exception("event=stop_error key=%s", flight.victim.key)
            v = flight.victim
            flight.outcome = StopRecord(
                v.key, v.pid, v.start_time, StopResult.FAILED, (),
                self._clock() - flight.started, f"stopper raised {type(exc).__name__}: {exc}",
            )  # fmt: skip
        finally:
            flight.done.set()
            with contextlib.suppress(OSError, ValueError):  # wake the loop to collect it
                os.write(self._wake_w, b"s")

    def _collect_stop(self) -> None:
        """Record a finished stop (on the loop thread): block, spent identity, pacing,
        settle phase or eviction record, as the stop's outcome says."""
        flight = self._inflight
        if flight is None or not flight.done.is_set():
            return
        self._inflight = None
        victim, outcome = flight.victim, flight.outcome
        if outcome is None or isinstance(outcome, Refusal):
            if not flight.blocked_before:
                self._blocks.clear_key(victim.key)
            if isinstance(outcome, Refusal):
                self._record_refusal(outcome)
            return
        result = outcome
        now = self._clock()
        if result.result in (StopResult.DENIED, StopResult.ALREADY_GONE):
            if not flight.blocked_before:
                self._blocks.clear_key(victim.key)
            if result.result is StopResult.ALREADY_GONE:
                self._spent.append(victim.identity)
        else:
            self._eviction_times.append(now)
        rec = EvictionRecord(
            victim.key, victim.pid, victim.priority.value, flight.reason, flight.footprint,
            result.result.value, None, result.duration, time.time(), result.message,
        )  # fmt: skip
        self._eviction_counts[(flight.reason, rec.result)] += 1
        if result.result.is_success:
            policy = self.planner.policy if self.planner is not None else None
            timeout = policy.settle_timeout if policy is not None else 0.0
            self._settle = _Settle(
                victim.key, flight.available, flight.footprint, now + timeout, rec
            )
        else:
            self._evictions.append(rec)
            self._post_all(self.listeners.on_eviction, rec)

    def _eviction_fields(self) -> dict[str, Any]:
        """The State's eviction fields as they stand now."""
        flight = self._inflight
        return {
            "blocked": self._blocks.keys(),
            "settling": self._settle.key if self._settle is not None else None,
            "evictions": tuple(self._evictions),
            "skips": tuple(self._skips),
            "eviction_counts": dict(self._eviction_counts),
            "skip_counts": dict(self._skip_counts),
            "reclaimed_total": self._reclaimed_total,
            "stopping": flight.victim.key if flight is not None else None,
            "busy_until": flight.deadline if flight is not None else None,
        }

    def _republish(self) -> None:
        """The State again after a stop ended inside the tick that started it."""
        self._state = dataclasses.replace(self._state, **self._eviction_fields())

    def _check_settle(self, system: SystemMemory, now: float) -> None:
        """End the settle phase once memory came back (a share of the footprint) or timed out."""
        settle = self._settle
        if settle is None:
            return
        share = self.planner.policy.settle_share if self.planner is not None else 0.5
        rose = None
        if settle.baseline is not None and system.available is not None:
            rose = max(0, system.available - settle.baseline)
        back = (
            rose is not None and settle.footprint is not None and rose >= share * settle.footprint
        )
        if not back and now < settle.deadline:
            return
        rec = dataclasses.replace(settle.record, reclaimed=rose)
        self._reclaimed_total += rose or 0
        self._settle = None
        self._evictions.append(rec)
        log.info("event=settled key=%s reclaimed=%s in_time=%s", rec.key, rose, back)
        self._post_all(self.listeners.on_eviction, rec)

    def _check_unblock(self, assessment: Assessment, now: float) -> None:
        if self._settle is not None or self._inflight is not None or not self._blocks.keys():
            return
        held = now - assessment.since
        if assessment.level == Level.NORMAL and held >= self.classifier.policy.transition_period:
            cleared = self._blocks.clear()
            log.info("event=respawn_unblocked keys=%s normal_for=%.1fs", ",".join(cleared), held)
            self._post_all(self.listeners.on_unblock, cleared)

    def _post_all(self, fns: Sequence[Callable[..., None]], *args: Any) -> None:
        post = self._notifier.post if self._notifier is not None else self._call_now
        for fn in fns:
            post(fn, *args)

    def _publish_heartbeat(self, now: float) -> None:
        with self._counter_lock:
            counters = dict(self._counters)
        self._state = dataclasses.replace(self._state, heartbeat=now, counters=counters)

    def _notify(self, state: State, assessment: Assessment, old: Level) -> None:
        post = self._notifier.post if self._notifier is not None else self._call_now
        for fn in self.listeners.on_sample:
            post(fn, state)
        for fn2 in self.listeners.on_assessment:
            post(fn2, assessment)
        if assessment.level != old:
            log.info(
                "event=level_change old=%s new=%s reason=%s",
                old.name,
                assessment.level.name,
                assessment.top_reason.message if assessment.top_reason else "-",
            )
            for fn3 in self.listeners.on_level_change:
                post(fn3, old, assessment.level, assessment)

    def _call_now(self, fn: Callable[..., None], *args: Any) -> None:
        """Listener call for a Watchdog driven by direct tick() calls (no notifier thread)."""
        try:
            fn(*args)
        except Exception:
            self._count("listener_errors")
            log.exception("event=listener_error listener=%s", getattr(fn, "__name__", fn))

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
                while not self._stop.is_set():
                    remaining = deadline - self._clock()
                    if remaining <= 0:
                        break
                    ready = sel.select(remaining)
                    if any(key.data == "wake" for key, _ in ready):
                        with contextlib.suppress(BlockingIOError):
                            os.read(self._wake_r, 64)
                        flight = self._inflight
                        if flight is not None and flight.done.is_set():
                            deadline = min(deadline, ticked + self.min_interval)  # collect it
                    if any(key.data == "events" for key, _ in ready) and self._on_event(sel):
                        # At once, but at most one tick per min_interval: a storm of events
                        # (vmpressure under heavy reclaim) must not become a busy loop.
                        deadline = min(deadline, ticked + self.min_interval)
        finally:
            sel.close()

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
