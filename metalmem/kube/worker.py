"""The one thread that makes every API call of the reporting path, and its pacing.

:class:`Worker` runs ``step`` until it reports nothing left to do, then sleeps until woken (a
listener recorded something) or the next refresh is due. Transient failures (connection
refused, timeouts, 5xx, 429: :class:`CallFailed` with ``transient``) back off exponentially up
to a cap, with jitter so that the agents of many nodes spread out; after an outage the objects
are re-read.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable

from .api import CallFailed
from .options import KubeOptions

__all__ = ["Worker"]

log = logging.getLogger("metalmem.kube")


class Worker:
    """Runs ``step`` on its own thread (see the module docstring)."""

    def __init__(
        self, step: Callable[[], bool], options: KubeOptions, clock: Callable[[], float]
    ) -> None:
        self._step = step
        self._options = options
        self._clock = clock
        self.failures_in_row = 0
        self._outage_since: float | None = None
        self._retry_at = 0.0
        self._next_refresh = 0.0
        self.refresh_wanted = True
        self.wake = threading.Event()
        self._stopping = threading.Event()
        self._idle = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def started(self) -> bool:
        return self._thread is not None

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="metalmem-kube", daemon=True)
        self._thread.start()

    def stop(self, timeout: float) -> None:
        self._stopping.set()
        self.wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def flush(self, timeout: float) -> bool:
        """Wait until ``step`` has nothing left; False on timeout or when not running."""
        if not self.alive:
            return False
        self._idle.clear()
        self.wake.set()
        return self._idle.wait(timeout)

    def refresh_due(self) -> bool:
        """Whether the objects are to be re-read now (and, if so, when next)."""
        if self.refresh_wanted or self._clock() >= self._next_refresh:
            self.refresh_wanted = False
            self._next_refresh = self._clock() + self._options.refresh
            return True
        return False

    def _run(self) -> None:
        while not self._stopping.is_set():
            now = self._clock()
            if now < self._retry_at:
                self.wake.wait(self._retry_at - now)
                self.wake.clear()
                continue
            self.wake.clear()
            try:
                did = self._step()
            except CallFailed as exc:
                self._backoff(exc)
                continue
            except Exception:  # a bug must not end reporting silently
                log.exception("event=kube_worker_error")
                self._retry_at = self._clock() + self._options.backoff_max
                continue
            if self.failures_in_row:
                log.info("event=kube_recovered down_for=%.1fs",
                         self._clock() - (self._outage_since or self._clock()))  # fmt: skip
                self.failures_in_row = 0
                self._outage_since = None
                self.refresh_wanted = True  # the objects may have changed meanwhile
                continue
            if not did:
                self._idle.set()
                self.wake.wait(max(0.0, self._next_refresh - self._clock()))

    def _backoff(self, exc: CallFailed) -> None:
        self.failures_in_row += 1
        doublings = min(self.failures_in_row - 1, 32)  # an outage of days must not overflow
        delay = min(self._options.backoff_max, self._options.backoff_initial * 2.0**doublings)
        delay *= random.uniform(0.5, 1.0)  # spread the agents of many nodes
        self._retry_at = self._clock() + delay
        if self.failures_in_row == 1:
            self._outage_since = self._clock()
            log.warning("event=kube_unreachable error=%r retry_in=%.2fs", exc.message, delay)
        else:
            log.debug("event=kube_retry failures=%d error=%r retry_in=%.2fs",
                      self.failures_in_row, exc.message, delay)  # fmt: skip
