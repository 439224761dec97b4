"""What the loop publishes: the immutable :class:`State` of every tick, the records it
carries (history points, evictions, skips) and the :class:`Listeners` it calls.

Readers (metrics, HTTP, Kubernetes) import these without importing the loop itself.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from .errors import Error
from .eviction import EvictionMode, Plan, SkipReason
from .level import Level
from .pressure import Assessment
from .sampler import ProcessMemory, SystemMemory

__all__ = [
    "EvictionRecord",
    "HistoryPoint",
    "LevelChange",
    "Listeners",
    "SkipRecord",
    "State",
    "TargetLike",
]


class TargetLike(Protocol):
    """What the loop needs of a managed target: a stable key and the pid to sample."""

    @property
    def key(self) -> str: ...

    @property
    def pid(self) -> int: ...


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

    @classmethod
    def initial(
        cls, started: float, interval: float, *, events: bool, mode: EvictionMode,
        blocked: tuple[str, ...],
    ) -> State:  # fmt: skip
        """The State before the first tick: no sample yet, the heartbeat at ``started``."""
        return cls(
            seq=0, system=None, processes={}, targets=(), assessment=None, history=(),
            counters={}, heartbeat=started, started_at=started, interval=interval,
            sample_duration=0.0, cpu_seconds=0.0, events=events, mode=mode, blocked=blocked,
        )  # fmt: skip


LevelChange = Callable[[Level, Level, Assessment], None]


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
