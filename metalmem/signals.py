"""Signals as something to wait on: the foreground loops' one way to hear them.

Handlers only record the signal and wake a pipe (``signal.set_wakeup_fd``), so the waiting
thread blocks in ``select()`` on that pipe (and whatever else it watches) without a periodic
wake-up; the previous handlers and wake-up fd come back on exit (uvicorn's
``capture_signals``). Handlers can only be installed from the main thread: elsewhere nothing is
installed and :meth:`SignalWaiter.wait` just waits for its timeout or a :meth:`poke`.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import threading
from collections.abc import Iterable
from typing import Any

__all__ = ["SignalWaiter"]


class SignalWaiter:
    """A context manager catching ``signals`` while it is entered."""

    def __init__(self, signals: Iterable[int]) -> None:
        self._signals = tuple(signals)
        self._pending: list[int] = []
        self._old: dict[int, Any] = {}
        self._old_fd = -1
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)
        self.received: int | None = None  # the first signal caught, for a caller that stops

    def __enter__(self) -> SignalWaiter:
        if threading.current_thread() is threading.main_thread():
            self._old_fd = signal.set_wakeup_fd(self._w)
            self._old = {s: signal.signal(s, self._handle) for s in self._signals}
        return self

    def _handle(self, signum: int, frame: object) -> None:
        self._pending.append(signum)
        if self.received is None:
            self.received = signum

    def poke(self) -> None:
        """Wake :meth:`wait` from another thread (or a listener)."""
        with contextlib.suppress(OSError):
            os.write(self._w, b"\0")

    def wait(self, timeout: float | None, *also: Any) -> None:
        """Block until a signal, a :meth:`poke`, one of ``also`` readable, or ``timeout``."""
        select.select([self._r, *also], [], [], timeout)
        with contextlib.suppress(BlockingIOError):
            os.read(self._r, 512)

    def pop(self) -> list[int]:
        """The signals caught since the last call, in order."""
        out, self._pending = self._pending, []
        return out

    def __exit__(self, *exc: object) -> None:
        if self._old:
            for s, handler in self._old.items():
                signal.signal(s, handler)
            signal.set_wakeup_fd(self._old_fd)
        os.close(self._r)
        os.close(self._w)
