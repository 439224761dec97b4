"""Prometheus Collector over the watchdog's latest state (filled in by the agent issue).

``AgentStats`` holds the few counters that live outside the watchdog (config reloads, the
Kubernetes reporter's writes and drops); components that own them increment them here and
the collector reads them at scrape time.
"""

from __future__ import annotations

import collections
import threading


class AgentStats:
    """Thread-safe counters of the agent around the watchdog; read at scrape time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reloads: collections.Counter[str] = collections.Counter()
        self._kube_writes: collections.Counter[tuple[str, str]] = collections.Counter()
        self._kube_dropped = 0

    def config_reload(self, result: str) -> None:
        """Count one config reload: ``success`` or ``failure``."""
        with self._lock:
            self._reloads[result] += 1

    def kube_write(self, kind: str, result: str) -> None:
        """Count one Kubernetes API write: ``kind`` condition|event|suspend|resume, ``result``
        success|conflict|not_found|forbidden|error."""
        with self._lock:
            self._kube_writes[(kind, result)] += 1

    def kube_dropped(self, n: int = 1) -> None:
        """Count writes dropped from the Kubernetes queue because it was full."""
        with self._lock:
            self._kube_dropped += n

    def snapshot(self) -> dict[str, object]:
        """A consistent copy: ``reloads`` {result: n}, ``kube_writes`` {(kind, result): n},
        ``kube_dropped`` n."""
        with self._lock:
            return {
                "reloads": dict(self._reloads),
                "kube_writes": dict(self._kube_writes),
                "kube_dropped": self._kube_dropped,
            }
