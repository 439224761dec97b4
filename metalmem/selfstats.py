"""The agent's own process and interpreter metrics, as prometheus-client's ``ProcessCollector``
and ``PlatformCollector`` export them (same names, help, values), without importing it.

``process_*`` is read on every scrape (Linux; absent where there is no /proc, as with
prometheus-client on macOS): sizes from /proc/self/statm (kept open), CPU from ``times()``,
open fds from the size of /proc/self/fd (Linux >= 6.2; a listing before), the limit from
``getrlimit``. ``python_info`` is fixed for the process's life.
"""

from __future__ import annotations

import contextlib
import math
import os
import resource
import sys
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


def _start_time() -> float | None:
    """Unix time this process started (/proc/self/stat and btime, as prometheus-client)."""
    try:
        with open("/proc/stat", "rb") as f:
            btime = next(float(line.split()[1]) for line in f if line.startswith(b"btime "))
        with open("/proc/self/stat", "rb") as f:
            parts = f.read().split(b")")[-1].split()
        return float(parts[19]) / os.sysconf("SC_CLK_TCK") + btime
    except (OSError, StopIteration, ValueError, IndexError):
        return None


_IMPLEMENTATIONS = {"cpython": "CPython", "pypy": "PyPy", "ironpython": "IronPython",
                    "jython": "Jython"}  # fmt: skip


def _info() -> list[tuple[Family, list[Series]]]:
    """As ``platform`` says it (without importing it: it brings socket, random, datetime)."""
    version = sys.version.split()[0]
    major, minor, patchlevel = [*version.split("."), "0", "0"][:3]
    name = sys.implementation.name
    values = (_IMPLEMENTATIONS.get(name, name), major, minor, patchlevel, version)
    return [(_INFO, [(_INFO.name, _INFO_LABELS, values, 1)])]


def _one(family: Family, value: float) -> tuple[Family, list[Series]]:
    return family, [(family.name, (), (), value)]


class _Self:
    """What a scrape reads, kept open: at one scrape a second, opening /proc/self/stat and
    listing /proc/self/fd took ~170 us of a ~500 us scrape with caches cold (issue 15)."""

    def __init__(self) -> None:
        self.start = _start_time()
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.info = _info()
        self.statm: int | None = None
        if self.start is not None:
            with contextlib.suppress(OSError):
                self.statm = os.open("/proc/self/statm", os.O_RDONLY | os.O_CLOEXEC)

    def families(self) -> list[tuple[Any, list[Series]]]:
        out: list[tuple[Any, list[Series]]] = []
        if self.statm is not None and self.start is not None:
            try:
                size, resident = os.pread(self.statm, 128, 0).split()[:2]
                times = os.times()
                fds = os.stat("/proc/self/fd").st_size  # Linux >= 6.2: the open fds
                if fds <= 0:
                    fds = len(os.listdir("/proc/self/fd"))  # counts its own, as the client
                soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
                out += [
                    _one(_VMEM, float(int(size) * self.page)),
                    _one(_RSS, float(int(resident) * self.page)),
                    _one(_START, self.start),
                    _one(_CPU, times.user + times.system),
                    _one(_OPEN_FDS, fds),
                    _one(_MAX_FDS, math.inf if soft == resource.RLIM_INFINITY else soft),
                ]
            except (OSError, ValueError):
                out = []
        return out + self.info


_SELF: _Self | None = None


def self_families() -> list[tuple[Any, list[Series]]]:
    """``process_*`` (where /proc/self can be read) then ``python_info``."""
    global _SELF
    if _SELF is None:
        _SELF = _Self()
    return _SELF.families()
