"""Hand-built records for tests of the pure layers (classifier, planner, replay)."""

from __future__ import annotations

from typing import Any

from metalmem import SystemMemory


def host(t: float = 0.0, **fields: Any) -> SystemMemory:
    """A calm Linux-like host sampled at time ``t``; keyword arguments override fields."""
    total = fields.get("total", 10**10)  # fractions of it are exact: 0.2 * total reads 0.2
    base: dict[str, Any] = {
        "total": total,
        "available": total // 2 if total is not None else None,
        "free": total // 4 if total is not None else None,
        "wired": 10**8,
        "compressed": 0,
        "swap_total": 0,
        "swap_used": 0,
        "pageouts": 0,
        "swapouts": 0,
        "oom_kills": 0,
        "os_level": None,
        "psi": None,
        "gpu_limit": None,
        "gpu_used": None,
        "scope": "host",
        "timestamp": t,
        "counters_timestamp": t,
        "limited": False,
    }
    base.update(fields)
    return SystemMemory(**base)
