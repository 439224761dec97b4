"""The histogram of watchdog tick durations (``metalmem_sample_duration_seconds``).

The watchdog observes every tick on its own loop thread (issue 15: feeding it from a listener
woke the notifier thread once a tick, two wake-ups a second where one is enough); a scrape
reads a consistent snapshot.
"""

from __future__ import annotations

import bisect
import math
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .watchdog import State

__all__ = ["SAMPLE_DURATION_BUCKETS", "SampleDurations"]

# Tick durations: ~20-60 us for a host sample plus 16 targets on Linux (benchmarks/), up to
# whole seconds when a tick carries a stop and its grace period; 1-2.5-5 steps cover both.
SAMPLE_DURATION_BUCKETS: tuple[float, ...] = (
    1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4,
    1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
)  # fmt: skip


class SampleDurations:
    """A thread-safe histogram of tick durations in seconds (fixed buckets, 1 us to 1 s).

    ``Watchdog(durations=...)`` observes each tick's duration on the loop thread. A host that
    drives ticks itself may call :meth:`observe` (or pass :meth:`on_sample` as a listener).
    """

    __slots__ = ("_counts", "_lock", "_sum", "buckets")

    def __init__(self, buckets: tuple[float, ...] = SAMPLE_DURATION_BUCKETS) -> None:
        if not buckets or list(buckets) != sorted(set(buckets)) or buckets[0] <= 0:
            raise ValueError(f"buckets must be increasing and > 0, got {buckets!r}")
        self.buckets = tuple(float(b) for b in buckets)
        self._counts = [0] * (len(self.buckets) + 1)  # the last one is +Inf
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, seconds: float) -> None:
        """Count one duration; a negative or non-finite value is ignored (a clock bug, not a
        sample)."""
        if not math.isfinite(seconds) or seconds < 0:
            return
        i = bisect.bisect_left(self.buckets, seconds)  # le: a value on a bound counts there
        with self._lock:
            self._counts[i] += 1
            self._sum += seconds

    def on_sample(self, state: State) -> None:
        """``Listeners.on_sample`` callback: observe the tick's duration."""
        self.observe(state.sample_duration)

    def snapshot(self) -> tuple[list[tuple[str, int]], float, int]:
        """``(cumulative buckets as (le, count) with +Inf last, sum, count)``, consistent."""
        with self._lock:
            counts = list(self._counts)
            total = self._sum
        out = []
        running = 0
        for bound, n in zip((*self.buckets, math.inf), counts, strict=True):
            running += n
            out.append(("+Inf" if bound == math.inf else repr(bound), running))
        return out, total, running
