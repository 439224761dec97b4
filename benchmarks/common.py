"""What every part of the suite shares: the environment switches and the machine's identity.

``METALMEM_BENCH_QUICK=1``: short runs for a smoke test (numbers not for publishing).
``METALMEM_BENCH_SKIP``: comma- or space-separated parts to skip: ``agent``, ``kube``,
``reaction``, ``polling`` (the measured 10 s polling trials), ``scale``.
"""

from __future__ import annotations

import os
import platform
from typing import Any

# Only the available-memory signal votes, so a tick's level does not follow other processes'
# PSI, swap or rates on a shared machine (the set tests/test_watchdog.py calls QUIET).
QUIET: dict[str, Any] = {
    f"{level}_{signal}": None
    for level in ("warning", "critical")
    for signal in (
        "gpu_headroom",
        "psi_some_pct",
        "psi_full_pct",
        "swapout_rate",
        "pageout_rate",
        "forecast",
    )
}

QUICK = os.environ.get("METALMEM_BENCH_QUICK", "") not in ("", "0")
SKIP = frozenset(os.environ.get("METALMEM_BENCH_SKIP", "").replace(",", " ").split())


def machine() -> dict[str, Any]:
    """CPU model, cores, kernel and Python: the report checks that every JSON of one run names
    the same machine, since ratios across machines mean nothing."""
    cpu = platform.processor() or platform.machine()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            cpu = next(
                (ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu
            )
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "system": platform.system(),
        "release": platform.release(),
        "python": platform.python_version(),
        "node": platform.node(),
    }
