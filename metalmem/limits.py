"""Upper bounds on every duration a user can set, and why each is what it is.

A duration is handed, in the end, to ``select``/``poll`` (milliseconds in a C ``int``: at most
2**31 - 1 ms, 24.8 days) or to ``threading`` waits (``threading.TIMEOUT_MAX``). Past those the
call raises ``OverflowError`` on the loop thread, which then dies while the process lives on
(issue 13, finding 6). The bounds below sit far inside that range, and each is also the largest
value that still means something for a memory guard: they refuse typos, not choices.
"""

from __future__ import annotations

import math

__all__ = ["MAX_DURATION", "MAX_GRACE", "MAX_INTERVAL", "check_duration"]

MAX_INTERVAL = 3600.0
"""The watchdog interval: a guard that samples less than once an hour protects nothing (the
kernel's OOM killer acts within seconds of exhaustion)."""

MAX_GRACE = 3600.0
"""SIGTERM -> SIGKILL grace: a model that needs over an hour to drain will not give its memory
back in time for the pressure that asked for it."""

MAX_DURATION = 7 * 86400.0
"""Every other duration (cooldown, windows, transition period, soft grace, settle timeout): a
week, the longest span a policy window is useful over, and 3.5x inside ``poll``'s limit."""


def check_duration(
    name: str,
    value: object,
    *,
    maximum: float = MAX_DURATION,
    minimum: float = 0.0,
    open_min: bool = False,
) -> float:
    """``value`` as float seconds if it is a finite number in range; else ``ValueError`` naming
    ``name``, the value and the bound (booleans are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name}: must be a duration in seconds, got {value!r}")
    seconds = float(value)
    low_ok = seconds > minimum if open_min else seconds >= minimum
    if not math.isfinite(seconds) or not low_ok:
        sign = ">" if open_min else ">="
        raise ValueError(f"{name}: must be a finite duration {sign} {minimum:g} s, got {value!r}")
    if seconds > maximum:
        raise ValueError(f"{name}: must be at most {maximum:g} s, got {value!r}")
    return seconds
