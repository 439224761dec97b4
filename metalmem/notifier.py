"""The notifier thread: runs listener calls off the loop thread, from a bounded queue."""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["Notifier"]


class Notifier:
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
