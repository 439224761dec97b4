"""The agent's own process and interpreter metrics, as prometheus-client's ``ProcessCollector``
and ``PlatformCollector`` export them (same names, help, values), without importing it.

``process_*`` is read from /proc/self on every scrape (Linux; absent where there is no /proc,
as with prometheus-client on macOS); ``python_info`` is fixed for the process's life.
"""

from __future__ import annotations

import os
import platform
from typing import Any

from .exposition import Family, Series

__all__ = ["self_families"]

_VMEM = Family("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.")
_RSS = Family("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.")
_START = Family(
    "process_start_time_seconds", "gauge", "Start time of the process since unix epoch in seconds."
)
_CPU = Family(
    "process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds."
)
_OPEN_FDS = Family("process_open_fds", "gauge", "Number of open file descriptors.")
_MAX_FDS = Family("process_max_fds", "gauge", "Maximum number of open file descriptors.")
_INFO_LABELS = ("implementation", "major", "minor", "patchlevel", "version")
_INFO = Family("python_info", "gauge", "Python platform information", _INFO_LABELS)


def _boot_time() -> float | None:
    try:
        with open("/proc/stat", "rb") as f:
            for line in f:
                if line.startswith(b"btime "):
                    return float(line.split()[1])
    except OSError:
        return None
    return None


def _info() -> list[tuple[Family, list[Series]]]:
    major, minor, patchlevel = platform.python_version_tuple()
    values = (
        platform.python_implementation(), major, minor, patchlevel, platform.python_version()
    )  # fmt: skip
    return [(_INFO, [(_INFO.name, _INFO_LABELS, values, 1)])]


_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGESIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_BTIME = _boot_time()
_PYTHON_INFO = _info()


def _one(family: Family, value: float) -> tuple[Family, list[Series]]:
    return family, [(family.name, (), (), value)]


def self_families() -> list[tuple[Any, list[Series]]]:
    """``process_*`` (where /proc/self can be read) then ``python_info``."""
    out: list[tuple[Any, list[Series]]] = []
    if _BTIME is not None:
        try:
            with open("/proc/self/stat", "rb") as f:
                parts = f.read().split(b")")[-1].split()
            out += [
                _one(_VMEM, float(parts[20])),
                _one(_RSS, float(parts[21]) * _PAGESIZE),
                _one(_START, float(parts[19]) / _TICKS + _BTIME),
                _one(_CPU, float(parts[11]) / _TICKS + float(parts[12]) / _TICKS),
            ]
        except OSError:
            pass
        try:
            max_fds = None
            with open("/proc/self/limits", "rb") as f:
                for line in f:
                    if line.startswith(b"Max open file"):
                        max_fds = float(line.split()[3])
                        break
            open_fds = len(os.listdir("/proc/self/fd"))
            if max_fds is not None:
                out += [_one(_OPEN_FDS, open_fds), _one(_MAX_FDS, max_fds)]
        except OSError:
            pass
    return out + _PYTHON_INFO
