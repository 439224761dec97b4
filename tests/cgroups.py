"""Memory cgroups for tests: a child group with a limit, its PSI beside it, always removed.

Two layouts are handled (reference/python-ecosystem.md §6):

- hybrid (this project's reference machine): the v1 memory controller at
  /sys/fs/cgroup/memory, cgroup2 at /sys/fs/cgroup/unified with PSI per group but no memory
  controller. The group is created under this process's own v1 memcg, with
  ``memory.limit_in_bytes`` and ``memory.memsw.limit_in_bytes`` (no escape into swap), and a
  cgroup2 group at the *same relative path* under unified/, which is where
  ``Sampler(scope=<v1 dir>)`` looks for the scope's ``memory.pressure``;
- pure cgroup2 with the memory controller: ``memory.max`` (and ``memory.swap.max`` = 0) on a
  group under this process's own cgroup when it delegates memory to its children, else under
  the hierarchy's root (a cgroup that holds processes cannot enable controllers for children).

Usage (``from . import cgroups`` in a test module)::

    reason = cgroups.skip_reason()
    if reason:
        pytest.skip(reason)
    with cgroups.memory_cgroup(64 << 20) as cg:
        child = cg.popen([...])             # starts inside; killed and reaped at exit
        other = subprocess.Popen([...])
        cg.add(other)                       # moved in later (its earlier pages stay outside)
        with Sampler(scope=cg.scope) as s:
            ...

Names carry the pid and a counter, so parallel runs never collide. Cleanup kills only the
processes given to :meth:`MemoryCgroup.add` or started by :meth:`MemoryCgroup.popen`, reaps
them, waits until the group is empty, and removes every directory the helper created (an
intermediate cgroup2 directory that another run still uses stays: rmdir refuses a non-empty
cgroup).
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import pathlib
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

V1_MEMORY = pathlib.Path("/sys/fs/cgroup/memory")
UNIFIED = pathlib.Path("/sys/fs/cgroup/unified")  # cgroup2 beside v1 (hybrid)
V2_ROOT = pathlib.Path("/sys/fs/cgroup")  # cgroup2 alone

_names = itertools.count()


def _own(kind: str) -> str:
    """This process's cgroup path: ``"memory"`` for the v1 memcg, ``""`` for cgroup2."""
    for line in pathlib.Path("/proc/self/cgroup").read_text().splitlines():
        hid, controllers, path = line.split(":", 2)
        if kind == "" and hid == "0" and controllers == "":
            return path
        if kind and kind in controllers.split(","):
            return path
    raise LookupError(f"this process is in no {kind or 'cgroup2'} cgroup")


def _layout() -> str | None:
    if (V1_MEMORY / "memory.usage_in_bytes").exists():
        return "hybrid"
    controllers = V2_ROOT / "cgroup.controllers"
    if controllers.exists() and "memory" in controllers.read_text().split():
        return "v2"
    return None


def _v2_parent() -> pathlib.Path:
    own = V2_ROOT / _own("").lstrip("/")
    for parent in (own, V2_ROOT):
        subtree = parent / "cgroup.subtree_control"
        if subtree.exists() and "memory" in subtree.read_text().split():
            return parent
    raise OSError(errno.ENOTSUP, "no cgroup2 group here delegates the memory controller")


def _write(path: pathlib.Path, value: str) -> None:
    # One write(2) per value: cgroup files take exactly one value per write.
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _pids(path: pathlib.Path) -> set[int]:
    try:
        return {int(p) for p in (path / "cgroup.procs").read_text().split()}
    except FileNotFoundError:
        return set()


class MemoryCgroup:
    """A created memory cgroup: paths, membership, the OOM-kill counter."""

    def __init__(self, name: str, limit: int) -> None:
        self.name = name
        self.limit = limit
        self.v1: pathlib.Path | None = None  # the v1 memcg directory (hybrid only)
        self.v2: pathlib.Path | None = None  # the cgroup2 directory: PSI, and on pure v2 limits
        self._created: list[pathlib.Path] = []  # in creation order; removed in reverse
        self._given: dict[int, subprocess.Popen[bytes] | None] = {}

    @property
    def scope(self) -> str:
        """The directory to pass as ``Sampler(scope=...)``."""
        path = self.v1 or self.v2
        assert path is not None
        return str(path)

    @property
    def pressure_file(self) -> pathlib.Path | None:
        """The group's ``memory.pressure`` (PSI), or None where PSI is off."""
        if self.v2 is None or not (self.v2 / "memory.pressure").exists():
            return None
        return self.v2 / "memory.pressure"

    def add(self, proc: subprocess.Popen[bytes] | int) -> None:
        """Move a process (a Popen, or a pid) into the group, in both hierarchies.

        It is then the helper's to kill at exit if it is still in the group: give it only
        processes the test started.
        """
        pid = proc if isinstance(proc, int) else proc.pid
        self._given[pid] = None if isinstance(proc, int) else proc
        for d in (self.v1, self.v2):
            if d is not None:
                _write(d / "cgroup.procs", str(pid))

    def popen(self, args: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        """Start a process already inside the group (both hierarchies), given to the helper.

        It joins between fork and exec, so every page it ever touches is charged here. A
        process moved in by :meth:`add` keeps what it allocated before elsewhere: v1 does not
        move charges with a task (memory.move_charge_at_immigrate is 0 and deprecated), nor
        does cgroup2. The interpreter's own start-up is charged too (4.75 MiB for Python 3.11
        on the reference machine).
        """
        paths = [os.fsencode(d / "cgroup.procs") for d in (self.v1, self.v2) if d is not None]

        def join() -> None:  # runs in the child, after fork, before exec
            for path in paths:
                fd = os.open(path, os.O_WRONLY)
                try:
                    os.write(fd, b"0")  # "0": the writing process itself
                finally:
                    os.close(fd)

        proc: subprocess.Popen[bytes] = subprocess.Popen(args, preexec_fn=join, **kwargs)
        self._given[proc.pid] = proc
        return proc

    def set_limit(self, limit: int) -> None:
        """Change the limit of a created group (v1: memory and memory+swap, in the order the
        kernel accepts: memsw may never be below the memory limit)."""
        if self.v1 is not None:
            memsw = self.v1 / "memory.memsw.limit_in_bytes"
            order = ["memory.limit_in_bytes", "memory.memsw.limit_in_bytes"]
            if limit > self.limit:
                order.reverse()
            for name in order:
                if name == "memory.limit_in_bytes" or memsw.exists():
                    _write(self.v1 / name, str(limit))
        else:
            assert self.v2 is not None
            _write(self.v2 / "memory.max", str(limit))
        self.limit = limit

    def pids(self) -> set[int]:
        """Every pid in the group, in either hierarchy."""
        return set().union(*(_pids(d) for d in (self.v1, self.v2) if d is not None))

    def oom_kills(self) -> int:
        """Cumulative OOM kills inside the group (v1 memory.oom_control, v2 memory.events)."""
        if self.v1 is not None:
            path = self.v1 / "memory.oom_control"
        else:
            assert self.v2 is not None
            path = self.v2 / "memory.events"
        for line in path.read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        raise LookupError(f"no oom_kill counter in {path}")

    # -- creation and removal ------------------------------------------------------------

    def _mkdir(self, path: pathlib.Path) -> None:
        """Create path and any missing parents, remembering what this group created. A parent
        removed by a concurrent run's cleanup between two steps is created again."""
        for _ in range(5):
            missing = []
            p = path
            while not p.exists():
                missing.append(p)
                p = p.parent
            try:
                for d in reversed(missing):
                    d.mkdir()
                    self._created.append(d)
                return
            except FileNotFoundError:
                continue
        raise OSError(errno.ENOENT, f"could not create {path}")

    def create(self) -> None:
        layout = _layout()
        if layout == "hybrid":
            rel = pathlib.PurePosixPath(_own("memory").lstrip("/")) / self.name
            self.v1 = V1_MEMORY / rel
            self._mkdir(self.v1)
            _write(self.v1 / "memory.limit_in_bytes", str(self.limit))
            if (self.v1 / "memory.memsw.limit_in_bytes").exists():
                _write(self.v1 / "memory.memsw.limit_in_bytes", str(self.limit))
            if (UNIFIED / "cgroup.procs").exists():
                self.v2 = UNIFIED / rel
                self._mkdir(self.v2)
        elif layout == "v2":
            self.v2 = _v2_parent() / self.name
            self._mkdir(self.v2)
            _write(self.v2 / "memory.max", str(self.limit))
            if (self.v2 / "memory.swap.max").exists():
                _write(self.v2 / "memory.swap.max", "0")
        else:
            raise OSError(errno.ENOTSUP, "no memory cgroup controller on this host")

    def remove(self, timeout: float = 10.0) -> None:
        """Kill and reap the processes given to :meth:`add`, wait for the group to empty, and
        remove what was created. Raises if a process the helper was not given stays inside."""
        for pid, proc in self._given.items():
            if pid not in self.pids():
                continue
            if proc is not None:
                if proc.poll() is None:
                    proc.kill()
            else:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for pid, proc in self._given.items():
            if proc is not None:
                proc.wait(timeout)
            else:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)  # ours: reap it; not ours: nothing to reap
        deadline = time.monotonic() + timeout
        while (left := self.pids()) and time.monotonic() < deadline:
            time.sleep(0.05)
        if left:
            raise RuntimeError(f"cgroup {self.name} still holds pids {sorted(left)}")
        for d in reversed(self._created):
            try:
                d.rmdir()
            except OSError as exc:
                # An intermediate directory shared with a concurrent run is still in use.
                if exc.errno not in (errno.EBUSY, errno.ENOTEMPTY, errno.ENOENT) or d in (
                    self.v1,
                    self.v2,
                ):
                    raise
        self._created.clear()


@contextlib.contextmanager
def memory_cgroup(limit: int) -> Iterator[MemoryCgroup]:
    """Create a memory cgroup limited to ``limit`` bytes; remove it however the block ends."""
    cg = MemoryCgroup(f"metalmem-test-{os.getpid()}-{next(_names)}", limit)
    try:
        cg.create()
        yield cg
    finally:
        cg.remove()


def skip_reason(*, psi: bool = True) -> str | None:
    """Why a memory cgroup (with PSI, unless ``psi=False``) cannot be made here, or None.

    Decided by trying: a probe group is created and removed, so a read-only cgroupfs or a
    refused write is found here, not in the middle of a test.
    """
    if not sys.platform.startswith("linux"):
        return "memory cgroups are Linux-only"
    if os.geteuid() != 0:
        return "creating memory cgroups needs root"
    if _layout() is None:
        return "no memory cgroup controller (neither v1 nor cgroup2 with memory)"
    try:
        with memory_cgroup(64 << 20) as cg:
            if psi and cg.pressure_file is None:
                return "no cgroup2 memory.pressure for the group (no cgroup2 mount or PSI off)"
    except (OSError, LookupError, RuntimeError) as exc:
        return f"cannot create a memory cgroup here: {exc}"
    return None
