"""Listener delivery: the notifier thread runs listener calls off the loop thread, from a
bounded queue; :class:`Dispatch` decides what a tick tells whom, and calls at once while no
thread runs (a Watchdog driven by direct ``tick()`` calls)."""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .level import Level
    from .pressure import Assessment
    from .state import Listeners, State

log = logging.getLogger(__name__)

__all__ = ["Dispatch", "Notifier"]


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


class Dispatch:
    """Posts listener calls to the notifier thread once :meth:`start` ran; before that (and
    after :meth:`close`), calls them at once on the calling thread. ``count`` names what to
    count: ``listener_errors`` and ``listener_drops``."""

    def __init__(self, listeners: Listeners, count: Callable[[str], None], queue_size: int):
        self.listeners = listeners
        self._count = count
        self._queue_size = queue_size
        self._notifier: Notifier | None = None

    def start(self) -> None:
        self._notifier = Notifier(
            self._queue_size,
            on_error=lambda: self._count("listener_errors"),
            on_drop=lambda: self._count("listener_drops"),
        )

    def close(self, timeout: float) -> None:
        if self._notifier is not None:
            self._notifier.close(timeout)

    def barrier(self, timeout: float) -> None:
        """Wait until the notifier delivered what was posted (no notifier: it was)."""
        if self._notifier is not None:
            self._notifier.barrier(timeout)

    def post_all(self, fns: Sequence[Callable[..., None]], *args: Any) -> None:
        post = self._notifier.post if self._notifier is not None else self._call_now
        for fn in fns:
            post(fn, *args)

    def published(self, state: State, assessment: Assessment, old: Level) -> None:
        """A tick's State: ``on_sample``, ``on_assessment``, and ``on_level_change`` when the
        level moved (logged as ``event=level_change``)."""
        self.post_all(self.listeners.on_sample, state)
        self.post_all(self.listeners.on_assessment, assessment)
        if assessment.level != old:
            log.info(
                "event=level_change old=%s new=%s reason=%s",
                old.name,
                assessment.level.name,
                assessment.top_reason.message if assessment.top_reason else "-",
            )
            self.post_all(self.listeners.on_level_change, old, assessment.level, assessment)

    def _call_now(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:
            self._count("listener_errors")
            log.exception("event=listener_error listener=%s", getattr(fn, "__name__", fn))
