"""Process tables: every pid with its command line, names and parent, read from ``/proc`` on
Linux (cached per identity across rescans) and from one ``ps`` run on macOS."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
from collections.abc import Iterable, Iterator
from typing import Any, Protocol, cast

from ..sampler import Sampler

log = logging.getLogger(__name__)


class ProcessTable(Protocol):
    """What resolution and discovery read about running processes, per platform."""

    def pids(self) -> Iterable[int]: ...
    def argv(self, pid: int) -> tuple[str, ...] | None: ...
    def names(self, pid: int) -> tuple[str, ...]: ...
    def ppid(self, pid: int) -> int | None: ...


# root -> pid -> [identity, the names, argv (_UNREAD: not read yet)]: what the last rescan
# learnt about each process, valid while its identity (comm and start time) is unchanged.
_KNOWN: dict[str, dict[int, list[Any]]] = {}
_UNREAD = object()


def _stat_identity(raw: bytes) -> tuple[bytes, bytes] | None:
    """(comm, start time in ticks) from /proc/PID/stat: comm between the first '(' and the
    last ')' (a name may hold either), the start time 20 fields after that ')'."""
    left, right = raw.find(b"("), raw.rfind(b")")
    if left < 0 or right < left:
        return None
    fields = raw[right + 1 :].split()
    if len(fields) < 20:
        return None
    return raw[left + 1 : right], fields[19]


class _ProcFS:
    """Linux: ``/proc/<pid>/{cmdline,comm,exe,stat}`` under ``root``; a process that vanishes
    or hides while being read is skipped, as it would be a moment later anyway.

    A rescan reads each process's ``stat`` (one small read: its comm and start time) and
    resolves the ``exe`` link and reads ``cmdline`` only when either changed since the last
    scan: exec and PR_SET_NAME change comm, and a pid reused by another process changes the
    start time, so an unchanged pair is the same process running the same program (issue
    15: the readlink per process and the cmdline per match were most of a rescan). A pid
    that leaves the listing leaves the cache; without a readable stat nothing is cached. Left
    stale: a command line rewritten in place (setproctitle) keeps the name first read."""

    def __init__(self, root: str) -> None:
        self.root = root
        self._known = _KNOWN.setdefault(root, {})
        self._checked: set[int] = set()  # pids whose identity this scan compared

    def pids(self) -> Iterator[int]:
        try:
            entries = os.listdir(self.root)
        except OSError as exc:
            log.warning("event=proc_scan_failed root=%s error=%s", self.root, exc)
            return
        pids = [int(e) for e in entries if e.isdigit()]
        if self._known:
            alive = set(pids)
            for gone in [p for p in self._known if p not in alive]:
                del self._known[gone]
        yield from pids

    def _read(self, pid: int, name: str, size: int = 65536) -> bytes | None:
        try:
            fd = os.open(f"{self.root}/{pid}/{name}", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            chunks = [os.read(fd, size)]
            while len(chunks[-1]) == size:  # comm and stat take one read
                chunks.append(os.read(fd, size))
            return b"".join(chunks)
        except OSError:
            return None
        finally:
            os.close(fd)

    def argv(self, pid: int) -> tuple[str, ...] | None:
        known = self._known.get(pid) if pid in self._checked else None
        if known is not None and known[2] is not _UNREAD:
            return cast(tuple[str, ...] | None, known[2])
        raw = self._read(pid, "cmdline")
        # kernel threads and zombies have an empty command line
        argv = tuple(os.fsdecode(a) for a in raw.rstrip(b"\0").split(b"\0")) if raw else None
        if known is not None:
            known[2] = argv
        return argv

    def names(self, pid: int) -> tuple[str, ...]:
        """``comm`` (the executable's basename as exec'd, cut to 15 bytes) and the basename
        of the ``exe`` link, where readable."""
        stat = self._read(pid, "stat", 4096)
        identity = _stat_identity(stat) if stat else None
        known = self._known.get(pid)
        if identity is not None and known is not None and known[0] == identity:
            self._checked.add(pid)
            return cast(tuple[str, ...], known[1])
        comm = identity[0] if identity is not None else (self._read(pid, "comm", 64) or b"")
        out = []
        if comm.rstrip(b"\n"):
            out.append(os.fsdecode(comm.rstrip(b"\n")))
        with contextlib.suppress(OSError):  # another user's process without CAP_SYS_PTRACE
            out.append(os.path.basename(os.readlink(os.path.join(self.root, str(pid), "exe"))))
        names = tuple(out)
        if identity is not None:
            self._known[pid] = [identity, names, _UNREAD]
            self._checked.add(pid)
        else:
            self._known.pop(pid, None)
        return names

    def ppid(self, pid: int) -> int | None:
        """The parent's pid: field 4 of ``stat``, after the last ``)`` (a hostile name cannot
        forge it)."""
        raw = self._read(pid, "stat")
        if not raw:
            return None
        fields = raw[raw.rfind(b")") + 1 :].split()
        return int(fields[1]) if len(fields) > 1 and fields[1].isdigit() else None


class _PsTable:
    """macOS (and any system with a POSIX ``ps``): one snapshot from two ``ps`` runs.

    ``ps`` prints the command line joined by spaces, so an argument that itself contains a
    blank is split in two here; names from ``--alias``/``-m`` are then cut at the blank.
    """

    def __init__(self) -> None:
        self._comm = parse_ps_output(_run_ps("comm"))
        self._args = parse_ps_output(_run_ps("args"))

    def pids(self) -> Iterable[int]:
        return self._args.keys()

    def argv(self, pid: int) -> tuple[str, ...] | None:
        args = self._args.get(pid)
        return tuple(args.split()) if args else None

    def names(self, pid: int) -> tuple[str, ...]:
        comm = self._comm.get(pid)
        return (os.path.basename(comm),) if comm else ()

    def ppid(self, pid: int) -> int | None:
        return None  # router instances are mapped on Linux only


def _run_ps(column: str) -> str:
    return subprocess.run(
        ["ps", "-axww", "-o", f"pid=,{column}="],
        check=True,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=10,
    ).stdout


def parse_ps_output(text: str) -> dict[int, str]:
    """``{pid: rest of line}`` from ``ps -o pid=,<column>=`` output; malformed lines skipped."""
    out: dict[int, str] = {}
    for line in text.splitlines():
        head, _, rest = line.strip().partition(" ")
        if head.isdigit() and rest.strip():
            out[int(head)] = rest.strip()
    return out


def creation_stamp(sampler: Sampler, proc_root: str | None) -> int | None:
    """The pid the kernel allocated last (Linux ``/proc/loadavg``, its fifth field), or
    ``None`` where it cannot be read (macOS, a captured tree without it).

    Every new process and thread takes a pid, so while this stays the same no process has
    started since it was read, and no pid has been reused: a rescan would find the same
    processes, less those that exited. One small read instead of a rescan of the host."""
    if sys.platform != "linux" and proc_root is None:
        return None
    root = proc_root if proc_root is not None else os.path.join(sampler.root, "proc")
    try:
        with open(os.path.join(root, "loadavg"), "rb") as f:
            return int(f.read().split()[4])
    except (OSError, IndexError, ValueError):
        return None


def process_table(sampler: Sampler, proc_root: str | None) -> ProcessTable:
    """``/proc`` under ``proc_root`` (else the sampler's root) on Linux, ``ps`` elsewhere."""
    if proc_root is not None:
        return _ProcFS(proc_root)
    if sys.platform == "linux":
        return _ProcFS(os.path.join(sampler.root, "proc"))
    return _PsTable()
