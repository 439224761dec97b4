"""Arming the pressure-event source with this scope's thresholds, so that it wakes the loop
as available memory crosses them (Linux: cgroup v1 thresholds; on the host and cgroup v2 the
watch of available memory, which the loop polls itself: one wake-up per tick when idle)."""

from __future__ import annotations

import logging
import math

from .errors import Error
from .pressure import PressurePolicy
from .sampler import SystemMemory

log = logging.getLogger(__name__)

__all__ = ["Arming"]


class Arming:
    """Remembers what the source was last armed with, so it is armed again only on a change."""

    def __init__(self) -> None:
        self._armed: tuple[int, float, float, int] | None = None
        self.watch_at = math.inf
        """When the reader-paced watch is next due (the loop's clock), infinity without one."""
        self._watch_lost = False

    def update(
        self, events: object, system: SystemMemory, policy: PressurePolicy, interval: float
    ) -> None:
        """Give the event source the available-memory thresholds (bytes) of this scope, so
        that it wakes the loop as they are crossed; again whenever total or the policy
        changes. A source that cannot take them (macOS, a test's) is left as it is."""
        arm = getattr(events, "arm", None)
        if arm is None or not system.total:
            return
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
        kwargs = {"paced_by_reader": True} if hasattr(events, "watch") else {}
        try:
            arm(warning, critical, min_period=0.01, max_period=min(1.0, interval), **kwargs)
        except (Error, OSError, ValueError) as exc:
            log.info("event=event_thresholds_unavailable error=%r", exc)
            return
        log.info(
            "event=event_thresholds warning_available=%d critical_available=%d sources=%s",
            warning, critical, ",".join(sorted(getattr(events, "sources", ()))) or "-",
        )  # fmt: skip

    def poll(self, events: object, now: float) -> bool:
        """Poll the watch (where the source has one armed): True when available crossed a
        threshold since its last poll. Sets :attr:`watch_at` from the period it asks for."""
        self.watch_at = math.inf
        watch = getattr(events, "watch", None)
        if watch is None or self._watch_lost:
            return False
        try:
            polled = watch()
        except (Error, OSError) as exc:
            log.warning("event=memory_watch_lost error=%r fallback=polling", exc)
            self._watch_lost = True
            return False
        if polled is None:
            return False
        changed, period = polled
        self.watch_at = now + period
        if changed:
            log.debug("event=memory_watch_crossed")
        return bool(changed)
