"""Pins: the identity a ``pid =`` target had when it was first seen, kept across reloads and
restarts.

A bare pid names a process only until it exits; the kernel then hands the number to the next
process that asks. So a ``pid =`` target is adopted once, as ``(pid, start_time)``, and from then
on the pid is trusted only while it names that same process. A pin is made the first time a
spec with that pid is seen (the agent's start, or a reload that adds or changes it): if no such
process runs then, the pin says so (``start_time`` ``None``) and nothing is ever adopted under
it. A pin stays while its spec is configured, after its process exits too (that is what keeps a
reused pid out); it is dropped with the spec. With a state dir the pins survive a restart, for
the same boot only (start times count from boot).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import threading
from collections.abc import Iterable, Mapping
from typing import Any

from .statefile import StateFileError, boot_id, read_state, write_state

__all__ = ["Pin", "PinStore"]

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, slots=True)
class Pin:
    """``pid`` adopted as the process started at ``start_time``; ``None``: absent when first
    seen, never adopted."""

    pid: int
    start_time: float | None


class PinStore:
    """Pins by target key, persisted in ``state_dir/pins.json`` when a state dir is given."""

    FILE = "pins.json"

    def __init__(self, state_dir: str | None = None, *, boot: str | None = None) -> None:
        self._path = os.path.join(state_dir, self.FILE) if state_dir else None
        self._boot = boot if boot is not None else boot_id()
        self._lock = threading.Lock()
        self._pins: dict[str, Pin] = {}
        doc = read_state(self._path, _check_pins)
        if doc is not None:
            if doc["boot_id"] is not None and doc["boot_id"] != self._boot:
                log.info("event=pins_dropped reason=other_boot count=%d", len(doc["pins"]))
            else:
                self._pins = dict(doc["pins"])

    def get(self, key: str) -> Pin | None:
        with self._lock:
            return self._pins.get(key)

    def items(self) -> tuple[tuple[str, Pin], ...]:
        with self._lock:
            return tuple(sorted(self._pins.items()))

    def set(self, key: str, pin: Pin) -> None:
        with self._lock:
            if self._pins.get(key) == pin:
                return
            self._pins[key] = pin
        self._flush()

    def retain(self, keys: Iterable[str]) -> None:
        """Drop the pins of keys no longer configured."""
        keep = set(keys)
        with self._lock:
            gone = [k for k in self._pins if k not in keep]
            for k in gone:
                del self._pins[k]
        if gone:
            self._flush()

    def _flush(self) -> None:
        with self._lock:
            pins = {
                k: {"pid": p.pid, "start_time": p.start_time} for k, p in sorted(self._pins.items())
            }
        write_state(self._path, {"version": 1, "boot_id": self._boot, "pins": pins})


def _check_pins(doc: Any) -> Mapping[str, Any]:
    if not isinstance(doc, dict) or not isinstance(doc.get("pins"), dict):
        raise StateFileError('expected {"version": 1, "boot_id": ..., "pins": {KEY: {...}}}')
    boot = doc.get("boot_id")
    if boot is not None and not isinstance(boot, str):
        raise StateFileError(f"boot_id is {type(boot).__name__}, not a string")
    pins: dict[str, Pin] = {}
    for key, value in doc["pins"].items():
        if not isinstance(value, dict):
            raise StateFileError(f"pins[{key!r}] is {type(value).__name__}, not an object")
        pid, start = value.get("pid"), value.get("start_time")
        if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 1:
            raise StateFileError(f"pins[{key!r}].pid is {pid!r}, not a pid")
        if start is not None and (
            isinstance(start, bool)
            or not isinstance(start, int | float)
            or not math.isfinite(start)
        ):
            raise StateFileError(f"pins[{key!r}].start_time is {start!r}, not a time")
        pins[str(key)] = Pin(pid, None if start is None else float(start))
    return {"boot_id": boot, "pins": pins}
