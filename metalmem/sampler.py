"""Sampling memory state through the native module: system, processes, GPU, pressure events.

This is the only module that imports ``metalmem._native`` (STYLE rule 1) and the only place
where errno becomes an exception (rule 8, :func:`_raise_for`). Records are NamedTuples: they are
built on the hot path, and a NamedTuple costs a fraction of a frozen dataclass (measured in
benchmarks/). A field the platform or the kernel cannot provide is ``None``, never 0.
"""

from __future__ import annotations

import errno as _errno
import functools
import os
import struct
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from .errors import AccessDenied, Error, NoSuchProcess, Unsupported
from .level import Level

try:
    from ._native import ffi, lib
except ImportError as exc:  # pragma: no cover - a broken install, not a runtime condition
    raise ImportError(
        "metalmem's native module is missing or stale; rebuild it with "
        "`pip install --force-reinstall --no-deps .` (or `make install`)"
    ) from exc

_ABI_VERSION = 3
if lib.mm_abi_version() != _ABI_VERSION:  # pragma: no cover - a stale build
    raise ImportError(
        f"metalmem._native has ABI {lib.mm_abi_version()}, expected {_ABI_VERSION}: "
        "rebuild with `pip install --force-reinstall --no-deps .`"
    )

PLATFORM: str = ffi.string(lib.mm_platform()).decode()

__all__ = [
    "PSI",
    "GpuMemory",
    "PressureEvents",
    "ProcessMemory",
    "Sampler",
    "SystemMemory",
    "process_memory",
    "system_memory",
]


class PSI(NamedTuple):
    """Pressure stall information: averages in percent of wall time, totals in seconds."""

    some_avg10: float | None
    some_avg60: float | None
    full_avg10: float | None
    full_avg60: float | None
    some_total: float | None
    full_total: float | None


class SystemMemory(NamedTuple):
    """One sample of the host (or of a cgroup scope). Bytes; ``None`` where unknown.

    ``pageouts``/``swapouts``/``oom_kills`` are cumulative; they and the GPU figures come from
    the expensive sources (Linux /proc/vmstat, NVML), read at most once a second: their age is
    ``timestamp - counters_timestamp``. Timestamps are ``time.monotonic()`` seconds.
    """

    total: int | None
    available: int | None
    free: int | None
    wired: int | None
    compressed: int | None
    swap_total: int | None
    swap_used: int | None
    pageouts: int | None
    swapouts: int | None
    oom_kills: int | None
    os_level: Level | None
    psi: PSI | None
    gpu_limit: int | None
    gpu_used: int | None
    scope: str
    timestamp: float
    counters_timestamp: float | None
    limited: bool  # a cgroup scope whose memory limit is below the host's RAM


class ProcessMemory(NamedTuple):
    """Memory of one process. ``(pid, start_time)`` names it for its whole lifetime.

    ``footprint`` is what the process costs the machine: macOS ``ri_phys_footprint`` (includes
    Metal buffers and compressed pages), Linux anonymous resident + swap. On Linux each figure
    is read at the rate it changes: ``rss`` and ``anon`` (resident - shared) from
    /proc/PID/statm on every call; ``wired`` (VmLck + VmPin) and ``peak`` (VmHWM) from
    /proc/PID/status every ~10 s per process (``detail_timestamp`` says when), ``peak`` raised
    to ``rss`` in between; ``swap`` is 0 while /proc/swaps shows no swap in use (nothing can be
    swapped out) and VmSwap from status, at most a second old, while it does.
    """

    pid: int
    start_time: float | None
    rss: int | None
    footprint: int | None
    wired: int | None
    swap: int | None
    peak: int | None
    anon: int | None
    timestamp: float
    detail_timestamp: float | None


class GpuMemory(NamedTuple):
    """The GPU's memory budget: ``limit`` is what it may use (NVML total; Metal's
    ``recommendedMaxWorkingSetSize`` or ``iogpu.wired_limit_mb``), ``used`` what is in use.

    On macOS ``used`` and ``allocated`` are the whole system's (the IORegistry's IOAccelerator
    "In use system memory" and "Alloc system memory", docs/wired-memory.md §9), not this
    process's; ``None`` where the dictionary lacks the key."""

    name: str | None
    unified: bool | None
    limit: int | None
    allocated: int | None
    used: int | None


# --- native record layout ------------------------------------------------------------------
# The structs are unpacked in one call over their buffer; the formats mirror csrc/metalmem.h
# and are checked against cffi's sizes at import, so a header change cannot go unnoticed.
_SYS = struct.Struct("@13Q4d2Q2i2d16Q")
# The part every platform fills; macOS page counters follow it (unpacked only on macOS).
_SYS_HEAD = struct.Struct("@13Q4d2Q2i2d")
_SYS_HEAD_LEN = 23
# The fields that move on every call: available, free, generation, sampled_at (see
# Sampler._bind_system); offsets checked against cffi's below.
_SYS_MOVING = struct.Struct("@16x2Q124xid")
# Records are built with tuple.__new__ on the hot paths: the generated NamedTuple __new__
# costs an extra Python frame per record.
_new = tuple.__new__
_PROC = struct.Struct("@2id6Q2dQ2i")
# A complete item straight into ProcessMemory's fields: err and the trailing have/call skipped.
_PROC_FAST = struct.Struct("@i4xd6Q2d16x")
if (
    _SYS.size != ffi.sizeof("struct mm_system")
    or _PROC.size != ffi.sizeof("struct mm_proc")
    or _PROC_FAST.size != _PROC.size
    or [
        ffi.offsetof("struct mm_system", f)
        for f in ("available", "free", "generation", "sampled_at")
    ]
    != [16, 24, 156, 160]
):
    raise ImportError("metalmem: struct layout of _native does not match sampler.py")

_H_TOTAL = lib.MM_HAVE_TOTAL
_H_AVAILABLE = lib.MM_HAVE_AVAILABLE
_H_FREE = lib.MM_HAVE_FREE
_H_WIRED = lib.MM_HAVE_WIRED
_H_COMPRESSED = lib.MM_HAVE_COMPRESSED
_H_SWAP = lib.MM_HAVE_SWAP
_H_PAGEOUTS = lib.MM_HAVE_PAGEOUTS
_H_SWAPOUTS = lib.MM_HAVE_SWAPOUTS
_H_PSI_SOME = lib.MM_HAVE_PSI_SOME
_H_PSI_FULL = lib.MM_HAVE_PSI_FULL
_H_OS_LEVEL = lib.MM_HAVE_OS_LEVEL
_H_PSI_BOTH = _H_PSI_SOME | _H_PSI_FULL
_H_GPU_LIMIT = lib.MM_HAVE_GPU_LIMIT
_H_GPU_USED = lib.MM_HAVE_GPU_USED
_H_OOM = lib.MM_HAVE_OOM_KILLS
_H_VM_PAGES = lib.MM_HAVE_VM_PAGES
_mm_system = lib.mm_system
_H_VM_EVENTS = lib.MM_HAVE_VM_EVENTS
_H_LIMIT = lib.MM_HAVE_LIMIT

_P_RSS = lib.MM_PHAVE_RSS
_P_FOOTPRINT = lib.MM_PHAVE_FOOTPRINT
_P_WIRED = lib.MM_PHAVE_WIRED
_P_SWAP = lib.MM_PHAVE_SWAP
_P_PEAK = lib.MM_PHAVE_PEAK
_P_START = lib.MM_PHAVE_START
_P_ANON = lib.MM_PHAVE_ANON
# partial(tuple.__new__) rather than ProcessMemory._make: no length check, 20 % less per record.
_make_process = functools.partial(_new, ProcessMemory)

# macOS kern.memorystatus_vm_pressure_level (reference/macos-memory.md §2.1).
_DARWIN_LEVELS = {1: Level.NORMAL, 2: Level.WARNING, 4: Level.CRITICAL}

# Names of the raw macOS page counters in struct order, as derive_darwin expects them.
_VM_PAGE_KEYS = (
    "free",
    "active",
    "inactive",
    "speculative",
    "throttled",
    "wired_down",
    "purgeable",
    "file_backed",
    "anonymous",
    "stored_in_compressor",
    "occupied_by_compressor",
)
_VM_EVENT_KEYS = ("pageins", "pageouts", "swapins", "swapouts")


def _raise_for(err: int, call: str, *, pid: int | None = None) -> Error | OSError:
    """Map a native errno to the exception to raise (the one place, STYLE rule 8)."""
    if err == _errno.ESRCH:
        return NoSuchProcess(f"process no longer exists ({call})", pid=pid, errno=err)
    if err in (_errno.EPERM, _errno.EACCES):
        return AccessDenied(f"permission denied ({call})", pid=pid, errno=err)
    if err in (_errno.ENOSYS, _errno.ENOTSUP, _errno.EOPNOTSUPP):
        return Unsupported(f"not supported here ({call})", pid=pid, errno=err)
    return OSError(err, f"metalmem: {call} failed: {os.strerror(err)}")


def _call_name(call: int) -> str:
    name: str = ffi.string(lib.mm_call_name(call)).decode()
    return name


def _opt(have: int, bit: int, value: Any) -> Any:
    return value if have & bit else None


def system_from_raw(raw: tuple[Any, ...], scope: str) -> SystemMemory:
    """Build a :class:`SystemMemory` from an unpacked ``struct mm_system``.

    ``raw`` is the whole struct, or only its first 23 fields where no macOS page counters
    are present (the Linux fast path).

    The one mapping from native values to the record, shared by every platform; on macOS the
    page counters go through :func:`metalmem.derive_darwin`. Tests feed it recorded values.
    """
    if len(raw) == _SYS_HEAD_LEN:
        (
            have,
            total,
            available,
            free,
            wired,
            compressed,
            swap_total,
            swap_used,
            pageouts,
            swapouts,
            oom_kills,
            gpu_limit,
            gpu_used,
            s10,
            s60,
            f10,
            f60,
            s_total,
            f_total,
            os_level,
            _r,
            sampled_at,
            slow_at,
        ) = raw
    else:
        (
            have,
            total,
            available,
            free,
            wired,
            compressed,
            swap_total,
            swap_used,
            pageouts,
            swapouts,
            oom_kills,
            gpu_limit,
            gpu_used,
            s10,
            s60,
            f10,
            f60,
            s_total,
            f_total,
            os_level,
            _r,
            sampled_at,
            slow_at,
            page_size,
            *vm,
        ) = raw
    os_lvl = _DARWIN_LEVELS.get(os_level) if have & _H_OS_LEVEL else None
    if have & _H_VM_PAGES:
        from .darwin import derive_darwin

        counters = dict(zip(_VM_PAGE_KEYS, vm, strict=False))
        if have & _H_VM_EVENTS:
            counters.update(zip(_VM_EVENT_KEYS, vm[len(_VM_PAGE_KEYS) :], strict=True))
        total_opt = total if have & _H_TOTAL else None
        d = derive_darwin(counters, page_size, total_opt)
        available, free, wired, compressed = d["available"], d["free"], d["wired"], d["compressed"]
        have |= _H_AVAILABLE | _H_FREE | _H_WIRED | _H_COMPRESSED
        if have & _H_VM_EVENTS:
            pageouts, swapouts = d["pageouts"], d["swapouts"]
            have |= _H_PAGEOUTS | _H_SWAPOUTS
        if total_opt is None:
            total = d["total"]
            have |= _H_TOTAL
    psi = None
    if have & _H_PSI_BOTH == _H_PSI_BOTH:
        psi = _new(PSI, (s10, s60, f10, f60, s_total / 1e6, f_total / 1e6))
    elif have & _H_PSI_BOTH:
        some, full = have & _H_PSI_SOME, have & _H_PSI_FULL
        psi = PSI(
            s10 if some else None,
            s60 if some else None,
            f10 if full else None,
            f60 if full else None,
            s_total / 1e6 if some else None,
            f_total / 1e6 if full else None,
        )
    has_swap = have & _H_SWAP
    # Inline conditionals, not _opt(), and tuple.__new__ rather than the NamedTuple's own
    # constructor: this runs on every tick (measured 0.5 us and 0.13 us saved).
    return _new(
        SystemMemory,
        (
            total if have & _H_TOTAL else None,
            available if have & _H_AVAILABLE else None,
            free if have & _H_FREE else None,
            wired if have & _H_WIRED else None,
            compressed if have & _H_COMPRESSED else None,
            swap_total if has_swap else None,
            swap_used if has_swap else None,
            pageouts if have & _H_PAGEOUTS else None,
            swapouts if have & _H_SWAPOUTS else None,
            oom_kills if have & _H_OOM else None,
            os_lvl,
            psi,
            gpu_limit if have & _H_GPU_LIMIT else None,
            gpu_used if have & _H_GPU_USED else None,
            scope,
            sampled_at,
            slow_at if slow_at > 0 else None,
            bool(have & _H_LIMIT),
        ),
    )


def process_from_raw(raw: tuple[Any, ...]) -> ProcessMemory | Error | OSError:
    """Build a :class:`ProcessMemory` (or the error for that item) from a ``struct mm_proc``."""
    pid, err, start, rss, footprint, wired, swap, peak, anon, sampled, detail_at, have, call, _ = (
        raw
    )
    if err:
        return _raise_for(err, _call_name(call), pid=pid)
    return ProcessMemory(
        pid,
        start if have & _P_START else None,
        rss if have & _P_RSS else None,
        footprint if have & _P_FOOTPRINT else None,
        wired if have & _P_WIRED else None,
        swap if have & _P_SWAP else None,
        peak if have & _P_PEAK else None,
        anon if have & _P_ANON else None,
        sampled,
        detail_at if detail_at > 0 else None,
    )


_PARSERS = {
    "meminfo": lambda buf, n, rec: lib.mm_parse_meminfo(buf, n, rec),
    "vmstat": lambda buf, n, rec: lib.mm_parse_vmstat(buf, n, rec),
    "psi": lambda buf, n, rec: lib.mm_parse_psi(buf, n, rec),
}
_PROC_PARSERS = {
    "statm": lambda buf, n, rec: lib.mm_parse_statm(buf, n, 4096, rec),
    "status": lambda buf, n, rec: lib.mm_parse_status(buf, n, rec),
    "stat": lambda buf, n, rec: lib.mm_parse_stat_start(buf, n, 100, rec),
}


def parse_proc_file(kind: str, data: bytes) -> dict[str, Any] | None:
    """Run one native Linux parser over ``data`` (tests feed it hostile bytes).

    ``kind`` is ``meminfo``, ``vmstat``, ``psi`` (system records) or ``statm`` (4 KiB pages),
    ``status``, ``stat`` (100 ticks/s). Returns the fields that parsed, or ``None`` when the
    parser rejected the input as a whole.
    """
    if kind in _PARSERS:
        rec = ffi.new("struct mm_system *")
        rc = _PARSERS[kind](data, len(data), rec)
        if rc != 0:
            return None
        m = system_from_raw(_SYS.unpack_from(ffi.buffer(rec)), "host")
        return {k: v for k, v in m._asdict().items() if v is not None and k not in _META}
    prec = ffi.new("struct mm_proc *")
    rc = _PROC_PARSERS[kind](data, len(data), prec)
    if rc != 0:
        return None
    p = process_from_raw(_PROC.unpack_from(ffi.buffer(prec)))
    assert isinstance(p, ProcessMemory)
    return {k: v for k, v in p._asdict().items() if v is not None and k not in _META}


_META = frozenset({"pid", "scope", "timestamp", "counters_timestamp", "limited"})


class Sampler:
    """Holds the open files and handles that make sampling cheap; ``close()`` releases them.

    ``root`` is the filesystem root under which ``proc/`` and ``sys/`` are read (tests point it
    at a captured tree; Linux only). ``scope`` is ``"host"`` or a cgroup directory (absolute,
    read beneath ``root``): then ``available`` is the cgroup's limit minus its usage plus its
    reclaimable file cache, bounded by the host's, and PSI is the cgroup's own.

    A Sampler is not thread-safe: one thread samples (the watchdog); others read its records.

    Raises :class:`Unsupported` for a scope that is not a memory cgroup and ``OSError`` when
    the root cannot be read.
    """

    def __init__(self, root: str = "/", scope: str = "host") -> None:
        self.root = root
        self.scope = scope
        self._handle = ffi.NULL
        self._closed = True
        err = ffi.new("struct mm_error *")
        out = ffi.new("mm_handle **")
        c_scope = b"" if scope == "host" else os.fsencode(scope)
        rc = lib.mm_open(os.fsencode(root), c_scope, out, err)
        if rc != 0:
            raise _raise_for(err.err, f"{_call_name(err.call)} under {root!r} scope {scope!r}")
        self._handle = out[0]
        self._closed = False
        self._sys = ffi.new("struct mm_system *")
        self._sys_buf = ffi.buffer(self._sys)
        self._err = err
        self._pids_cache: tuple[int, ...] = ()
        self._c_pids: Any = None
        self._c_procs: Any = None
        self._procs_buf: Any = None
        # The hot path, bound to this handle: see _bind_system. close() removes it, and the
        # class's system() (which checks for a closed sampler) is found again.
        self.system = self._bind_system()  # type: ignore[method-assign]

    # The context-manager and close protocol of files.
    def __enter__(self) -> Sampler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release every fd and handle; idempotent."""
        if self._handle != ffi.NULL:
            self._closed = True
            self.__dict__.pop("system", None)
            lib.mm_close(self._handle)
            self._handle = ffi.NULL

    def __del__(self) -> None:
        self.close()

    def _live(self) -> Any:
        if self._closed:
            raise ValueError("Sampler is closed")
        return self._handle

    @property
    def capabilities(self) -> frozenset[str]:
        """What this host offers: ``psi``, ``cgroup``, ``gpu``, ``events``."""
        caps = lib.mm_capabilities(self._live())
        names = {
            "psi": lib.MM_CAP_PSI,
            "cgroup": lib.MM_CAP_CGROUP,
            "gpu": lib.MM_CAP_GPU,
            "events": lib.MM_CAP_EVENTS,
        }
        return frozenset(n for n, bit in names.items() if caps & bit)

    def system(self) -> SystemMemory:
        """Sample the host (or the scope). Cheap: two preads on Linux, a few sysctls on macOS."""
        if self._closed:
            raise ValueError("Sampler is closed")
        if _mm_system(self._handle, self._sys, self._err):
            raise _raise_for(self._err.err, _call_name(self._err.call))
        raw = _SYS_HEAD.unpack_from(self._sys_buf)
        if raw[0] & _H_VM_PAGES:
            raw = _SYS.unpack_from(self._sys_buf)
        return system_from_raw(raw, self.scope)

    def _bind_system(self) -> Callable[[], SystemMemory]:
        """:meth:`system` as a closure over this handle that reuses the last record's objects.

        The issue's budget is 1.5x a raw C pread of the same files (2.06 us here), and
        building a record from the whole struct costs ~1 us of Python: ~19 objects allocated
        and freed per call. But call after call only ``available``, ``free`` and the time
        move; the C layer bumps ``generation`` when anything else changes (Linux; 0 where not
        tracked). While it holds, the record is rebuilt from the last one's field objects and
        the three new values, which reads 4 fields instead of 23 (measured: 3.35 -> ~2.8 us).
        Any other generation goes the full way (:func:`system_from_raw`); a test checks that
        both give the same record, and that a change of any field is seen.
        """
        mm_system, handle, out, err, buf = (
            _mm_system,
            self._handle,
            self._sys,
            self._err,
            self._sys_buf,
        )
        unpack_moving, unpack, scope, new, sm = (
            _SYS_MOVING.unpack_from,
            _SYS_HEAD.unpack_from,
            self.scope,
            _new,
            SystemMemory,
        )
        vm_pages = _H_VM_PAGES
        seen = -1  # the generation the fields below belong to; -1: none
        # The last record's fields but available, free, scope and timestamp, as closure cells
        # (a cell load is a third of a tuple index).
        total = wired = compressed = swap_total = swap_used = pageouts = swapouts = None
        oom_kills = os_level = psi = gpu_limit = gpu_used = counters_at = None
        limited = False

        def system() -> SystemMemory:
            nonlocal seen, total, wired, compressed, swap_total, swap_used, pageouts, swapouts
            nonlocal oom_kills, os_level, psi, gpu_limit, gpu_used, counters_at, limited
            if mm_system(handle, out, err):
                raise _raise_for(err.err, _call_name(err.call))
            available, free, generation, timestamp = unpack_moving(buf)
            if generation == seen:
                return new(
                    sm,
                    (total, available, free, wired, compressed, swap_total, swap_used, pageouts,
                     swapouts, oom_kills, os_level, psi, gpu_limit, gpu_used, scope, timestamp,
                     counters_at, limited),
                )  # fmt: skip
            raw = unpack(buf)
            if raw[0] & vm_pages:
                raw = _SYS.unpack_from(buf)
            record = system_from_raw(raw, scope)
            # Reuse only where available and free come straight from the struct.
            if generation and record.available is not None and record.free is not None:
                (total, _, _, wired, compressed, swap_total, swap_used, pageouts, swapouts,
                 oom_kills, os_level, psi, gpu_limit, gpu_used, _, _, counters_at,
                 limited) = record  # fmt: skip
                seen = generation
            else:
                seen = -1
            return record

        system.__doc__ = Sampler.system.__doc__
        return system

    def processes(self, pids: Iterable[int]) -> dict[int, ProcessMemory | Error | OSError]:
        """Sample many processes in one native call.

        Each pid maps to its :class:`ProcessMemory`, or to the exception for that pid alone
        (:class:`NoSuchProcess`, :class:`AccessDenied`): a batch never fails as a whole.
        """
        pids = tuple(pids)
        if not pids:
            return {}
        if pids != self._pids_cache:
            self._c_pids = ffi.new("int32_t[]", pids)
            self._c_procs = ffi.new("struct mm_proc[]", len(pids))
            self._procs_buf = ffi.buffer(self._c_procs)
            self._pids_cache = pids
        incomplete = lib.mm_processes(self._live(), self._c_pids, len(pids), self._c_procs)
        if not incomplete:  # every item whole: unpack straight into records
            records = map(_make_process, _PROC_FAST.iter_unpack(self._procs_buf))
            return dict(zip(pids, records, strict=True))
        return {raw[0]: process_from_raw(raw) for raw in _PROC.iter_unpack(self._procs_buf)}

    def process(self, pid: int) -> ProcessMemory:
        """Sample one process; raises :class:`NoSuchProcess` or :class:`AccessDenied`."""
        result = self.processes((pid,))[pid]
        if isinstance(result, BaseException):
            raise result
        return result

    def gpu(self, index: int = 0) -> GpuMemory | None:
        """The GPU's memory, or ``None`` where there is no GPU library (no NVML, no Metal)."""
        out = ffi.new("struct mm_gpu *")
        if lib.mm_gpu(self._live(), index, out, self._err) != 0:
            if self._err.err in (_errno.ENOTSUP, _errno.EOPNOTSUPP, _errno.ENODEV):
                return None
            raise _raise_for(self._err.err, _call_name(self._err.call))
        have = out.have
        return GpuMemory(
            ffi.string(out.name).decode(errors="replace") or None,
            bool(out.unified) if have & lib.MM_GHAVE_UNIFIED else None,
            _opt(have, lib.MM_GHAVE_LIMIT, out.limit),
            _opt(have, lib.MM_GHAVE_ALLOCATED, out.allocated),
            _opt(have, lib.MM_GHAVE_USED, out.used),
        )

    def events(
        self, *, some_ms: int = 150, full_ms: int = 50, window_s: float = 2.0
    ) -> PressureEvents:
        """Open OS pressure events for this host or scope (see :class:`PressureEvents`)."""
        return PressureEvents(self, some_ms=some_ms, full_ms=full_ms, window_s=window_s)


class PressureEvents:
    """A file descriptor that becomes readable when the OS signals memory pressure.

    Linux: PSI triggers on the scope's pressure file; ``some`` stalls of ``some_ms`` per window
    mean WARNING, ``full`` stalls of ``full_ms`` mean CRITICAL. A cgroup v1 scope also has
    ``memory.pressure_level`` (medium: WARNING, critical: CRITICAL); :meth:`arm` adds a wake-up
    at available-memory thresholds on every scope. Opening fails only where no source at all
    exists; :attr:`sources` says which are active and :attr:`psi_error` why PSI is not.
    Without CAP_SYS_RESOURCE the kernel accepts only windows that are a multiple of 2 s
    (reference/python-ecosystem.md §6.2) and refuses others with EINVAL.
    macOS: a dispatch memory-pressure source. Wait on :meth:`fileno` with ``selectors``, then
    call :meth:`read`; :meth:`close` releases the trigger and the thread or source.
    """

    def __init__(
        self, sampler: Sampler, *, some_ms: int = 150, full_ms: int = 50, window_s: float = 2.0
    ) -> None:
        self._ev = ffi.NULL
        self._lock = threading.Lock()
        window_us = round(window_s * 1e6)
        if not (0 < some_ms * 1000 <= window_us and 0 < full_ms * 1000 <= window_us):
            raise ValueError("stall thresholds must be positive and no longer than the window")
        err = ffi.new("struct mm_error *")
        out = ffi.new("mm_events **")
        rc = lib.mm_events_open(
            sampler._live(), some_ms * 1000, full_ms * 1000, window_us, out, err
        )
        if rc != 0:
            raise _raise_for(err.err, _call_name(err.call))
        self._ev = out[0]
        self._fd = lib.mm_events_fd(self._ev)
        self._level = ffi.new("int32_t *")

    def fileno(self) -> int:
        """The readable fd; valid until :meth:`close`."""
        if self._ev == ffi.NULL:
            raise ValueError("PressureEvents is closed")
        return int(self._fd)

    def arm(
        self,
        warning_available: int,
        critical_available: int,
        *,
        min_period: float = 0.01,
        max_period: float = 1.0,
        paced_by_reader: bool = False,
    ) -> None:
        """Also wake when available memory crosses either threshold (bytes), either way.

        Linux cgroup v1: kernel ``memory.usage_in_bytes`` thresholds at limit - each. Host and
        cgroup v2, which have no such notification: the event thread reads available itself
        (~5 us) every quarter of the time the headroom above ``critical_available`` lasts at
        the fastest fall seen, within [``min_period``, ``max_period``] s. Such a wake-up reads
        as :attr:`Level.NORMAL` (sample to learn the level). With ``paced_by_reader`` the
        caller polls that watch itself with :meth:`watch`, from the loop that waits on
        :meth:`fileno` (one wake-up then serves both). Re-arming replaces the thresholds.
        Raises :class:`Unsupported` on macOS (the OS decides when to signal).
        """
        with self._lock:
            if self._ev == ffi.NULL:
                raise ValueError("PressureEvents is closed")
            rc = lib.mm_events_arm(
                self._ev, warning_available, critical_available, min_period, max_period,
                1 if paced_by_reader else 0,
            )  # fmt: skip
        if rc != 0:
            raise _raise_for(-rc, "arm available-memory thresholds")

    def watch(self) -> tuple[bool, float] | None:
        """Poll a reader-paced watch (:meth:`arm` with ``paced_by_reader``) now: whether
        available crossed a threshold since the last poll, and the seconds until the next poll
        is due; ``None`` where no such watch is armed (cgroup v1 thresholds, macOS)."""
        with self._lock:
            if self._ev == ffi.NULL:
                raise ValueError("PressureEvents is closed")
            period = ffi.new("double *")
            rc = lib.mm_events_watch(self._ev, period)
        if rc == -_errno.ENOENT:
            return None
        if rc < 0:
            raise _raise_for(-rc, "read available memory for the watch")
        return rc == 1, float(period[0])

    @property
    def sources(self) -> frozenset[str]:
        """What can wake the reader now: ``psi``, ``v1_pressure_level``, ``v1_usage``
        (armed), ``watch`` (armed), ``dispatch`` (macOS)."""
        with self._lock:
            if self._ev == ffi.NULL:
                return frozenset()
            bits = lib.mm_events_sources(self._ev, self._level)
        return frozenset(name for name, bit in _SOURCES.items() if bits & bit)

    @property
    def psi_error(self) -> int | None:
        """The errno the kernel gave for the PSI trigger (ENOTSUP: no PSI file), or None."""
        with self._lock:
            if self._ev == ffi.NULL:
                return None
            lib.mm_events_sources(self._ev, self._level)
            code = int(self._level[0])
        return code or None

    @property
    def polls(self) -> int:
        """Reads the watch has made (its cost is about 5 us each)."""
        with self._lock:
            return 0 if self._ev == ffi.NULL else int(lib.mm_events_polls(self._ev))

    def read(self) -> Level | None:
        """Drain pending events; the highest level signalled, or ``None`` if none was pending.

        Raises ``OSError(EIO)`` when the source went away (its cgroup was removed).
        """
        with self._lock:
            if self._ev == ffi.NULL:
                raise ValueError("PressureEvents is closed")
            rc = lib.mm_events_read(self._ev, self._level)
        if rc == -_errno.EAGAIN:
            return None
        if rc != 0:
            raise _raise_for(-rc, "read pressure events")
        return Level(self._level[0])

    def close(self) -> None:
        """Remove the triggers and stop the notifier; idempotent."""
        with self._lock:
            if self._ev != ffi.NULL:
                lib.mm_events_close(self._ev)
                self._ev = ffi.NULL

    def __enter__(self) -> PressureEvents:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()


_SOURCES = {
    "psi": lib.MM_SRC_PSI,
    "v1_pressure_level": lib.MM_SRC_V1_PRESSURE,
    "v1_usage": lib.MM_SRC_V1_USAGE,
    "watch": lib.MM_SRC_WATCH,
    "dispatch": lib.MM_SRC_DISPATCH,
}


# --- one-shot convenience ------------------------------------------------------------------
_shared: Sampler | None = None
_shared_lock = threading.Lock()


def _default_sampler() -> Sampler:
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = Sampler()
        return _shared


def system_memory() -> SystemMemory:
    """Sample the host with a module-level Sampler (opened on first use)."""
    s = _default_sampler()
    with _shared_lock:
        return s.system()


def process_memory(pid: int) -> ProcessMemory:
    """Sample one process; raises :class:`NoSuchProcess` / :class:`AccessDenied`."""
    s = _default_sampler()
    with _shared_lock:
        return s.process(pid)


def as_dict(record: Any) -> dict[str, Any] | None:
    """A JSON-ready dict of a sampler record (nested records too); levels become names."""
    if record is None:
        return None
    out: dict[str, Any] = {}
    for key, value in record._asdict().items():
        if isinstance(value, Level):
            out[key] = value.name
        elif isinstance(value, tuple) and hasattr(value, "_asdict"):
            out[key] = as_dict(value)
        else:
            out[key] = value
    return out


if sys.platform not in ("linux", "darwin"):  # pragma: no cover
    raise ImportError(f"metalmem does not support {sys.platform}")
