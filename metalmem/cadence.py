"""The loop's cadence: how long to wait before the next tick, from the level, the forecast and
the fastest fall of available memory seen (earlyoom's sleep with a measured fill rate)."""

from __future__ import annotations

from .level import Level
from .pressure import Assessment
from .sampler import SystemMemory

__all__ = ["FALL_MEMORY", "MIN_WAIT", "Cadence"]

# The shortest wait the headroom bound may ask for (next_wait): a tick costs ~0.2 ms.
MIN_WAIT = 0.01
# How long the fastest fall seen bounds the wait: a model load an hour ago says nothing of now.
FALL_MEMORY = 600.0


class Cadence:
    """Tracks the fastest fall of available memory and derives the next wait from it.

    Not thread-safe: the loop thread notes every sample and asks for the wait.
    """

    def __init__(self) -> None:
        self.max_fall = 0.0  # the fastest fall of available memory seen, bytes per second
        self.max_fall_at = 0.0  # when it was seen
        self._last_available: tuple[float, int] | None = None

    def next_wait(
        self,
        assessment: Assessment | None,
        system: SystemMemory | None,
        *,
        interval: float,
        min_interval: float,
        critical_available: float,
    ) -> float:
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
            return interval
        wait = {Level.NORMAL: interval, Level.WARNING: interval / 4}.get(
            assessment.level, min_interval
        )
        floor = min_interval
        fall = self.max_fall if system is not None else 0.0
        if fall > 0 and system is not None and system.available is not None:
            headroom = system.available - critical_available * (system.total or 0)
            if headroom > 0:  # below the threshold the level itself sets the pace
                bound = headroom / fall / 2
                wait = min(wait, bound)
                # It may go below min_interval (10 ms at least): at 2 GiB/s, 100 MiB of
                # headroom last 50 ms.
                floor = max(MIN_WAIT, min(floor, bound))
        forecast = assessment.forecast_seconds
        if forecast is not None and forecast < 10 * interval:
            wait = min(wait, forecast / 10)
        return max(floor, min(interval, wait))

    def note(self, system: SystemMemory) -> None:
        """Keep the fastest fall of available memory seen in the last :data:`FALL_MEMORY`
        seconds (bytes per second), from samples at least 50 ms apart (closer ones turn a
        few pages of noise into a huge rate)."""
        available, at = system.available, system.timestamp
        last = self._last_available
        if available is None:
            return
        if at - self.max_fall_at > FALL_MEMORY:
            self.max_fall = 0.0
        if last is None or at - last[0] >= 0.05:
            if last is not None and available < last[1] and at > last[0]:
                rate = (last[1] - available) / (at - last[0])
                if rate >= self.max_fall:
                    self.max_fall, self.max_fall_at = rate, at
            self._last_available = (at, available)
