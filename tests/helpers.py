"""Our own child processes for tests: spawn, observe, reap, by pid (psutil's ``spawn_subproc``
and ``reap_children``), and waiting with deadlines on ``time.monotonic()`` (psutil ``retry``).

Tests only ever signal processes these helpers started. Every child also ends by itself after
``lifetime`` seconds, so a test run that dies hard leaves nothing behind for long.

Typical use, with a fixture that reaps whatever a test left running::

    @pytest.fixture
    def children():
        with Children() as c:
            yield c

    def test_x(children, tmp_path):
        child = children.spawn(ignore_term=True, signal_log=tmp_path / "signals")
"""

from __future__ import annotations

import atexit
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

# The child: apply the config (first argument after -c's source), say "ready" with a JSON
# line, then sleep until signalled or until its lifetime ends. Arguments after the config are
# ignored, so tests can add any command line they want to be seen (--alias, -m, markers).
CHILD_SOURCE = r"""
import json, os, signal, subprocess, sys, time
cfg = json.loads(sys.argv[1])
log_path = cfg["signal_log"]
def record(signum, frame):
    if log_path:
        fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.write(fd, b"%d\n" % signum)
        os.close(fd)
    if signum == signal.SIGTERM and not cfg["ignore_term"]:
        os._exit(0)
if log_path:
    for name in ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2"):
        signal.signal(getattr(signal, name), record)
elif cfg["ignore_term"]:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
hold = bytearray(b"\x01") * (cfg["allocate_mib"] << 20)  # filled, so every page is resident
grandchildren = [
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(%r)" % cfg["lifetime"]],
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL).pid
    for _ in range(cfg["grandchildren"])
]
print(json.dumps({"pid": os.getpid(), "grandchildren": grandchildren}), flush=True)
deadline = time.monotonic() + cfg["lifetime"]
while time.monotonic() < deadline:
    time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
"""


def wait_for(
    predicate: Callable[[], T], *, timeout: float = 5.0, interval: float = 0.01, what: str = ""
) -> T:
    """Call ``predicate`` until it returns something truthy and return that; raise
    ``TimeoutError`` naming ``what`` once ``timeout`` seconds (monotonic) have passed."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"not within {timeout} s: {what or predicate!r}")
        time.sleep(min(interval, left))


def has_exited(pid: int) -> bool:
    """Whether our child ``pid`` has exited, without reaping it (a zombie has exited; a pid
    that is no longer our child, e.g. already reaped, counts as exited)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def pidfd_has_exited(pidfd: int) -> bool:
    """Whether the process behind ``pidfd`` (any process, not only a child) has exited."""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(0))


@dataclass
class Child:
    """One child we started. ``signal_log`` receives one line per signal number it caught;
    ``grandchild_pidfds`` are pidfds (Linux) on the processes it started in its group."""

    pid: int
    popen: subprocess.Popen[bytes]
    argv: tuple[str, ...]
    signal_log: Path | None
    grandchildren: tuple[int, ...] = ()
    grandchild_pidfds: tuple[int, ...] = field(default=(), repr=False)

    def signals(self) -> list[int]:
        """The signals the child recorded, in order of arrival."""
        if self.signal_log is None or not self.signal_log.exists():
            return []
        return [int(line) for line in self.signal_log.read_text().split()]

    def has_exited(self) -> bool:
        """Exited (zombie or reaped); does not reap."""
        return self.popen.returncode is not None or has_exited(self.pid)


_live: dict[int, Child] = {}


def spawn_child(
    *,
    allocate_mib: int = 0,
    ignore_term: bool = False,
    signal_log: Path | None = None,
    args: Sequence[str] = (),
    executable: str | None = None,
    new_group: bool = False,
    grandchildren: int = 0,
    lifetime: float = 120.0,
    ready_timeout: float = 20.0,
) -> Child:
    """Start a Python child and return once it is ready (handlers installed, memory touched).

    ``allocate_mib`` MiB are allocated and written; ``ignore_term`` makes SIGTERM do nothing;
    ``signal_log`` records every catchable stop signal (TERM, INT, HUP, QUIT, USR1, USR2) to
    that file; ``args`` are appended to the command line; ``executable`` runs Python under
    another path (a symlink named ``llama-server`` gives the child that ``comm``);
    ``new_group`` makes the child lead a new process group, where it starts ``grandchildren``
    sleeping processes.
    """
    cfg = {
        "signal_log": str(signal_log) if signal_log is not None else None,
        "ignore_term": ignore_term,
        "allocate_mib": allocate_mib,
        "grandchildren": grandchildren,
        "lifetime": lifetime,
    }
    argv = (
        executable or sys.executable,
        "-c",
        CHILD_SOURCE,
        json.dumps(cfg),
        *args,
    )
    popen = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        process_group=0 if new_group else None,
    )
    child = Child(popen.pid, popen, argv, signal_log)
    _live[popen.pid] = child
    try:
        info = _read_ready(popen, ready_timeout)
    except BaseException:
        reap(popen.pid)
        raise
    child.grandchildren = tuple(info["grandchildren"])
    if sys.platform == "linux":
        child.grandchild_pidfds = tuple(os.pidfd_open(p) for p in child.grandchildren)
    return child


def _read_ready(popen: subprocess.Popen[bytes], timeout: float) -> dict[str, Any]:
    assert popen.stdout is not None
    fd = popen.stdout.fileno()
    buf = b""
    deadline = time.monotonic() + timeout
    while not buf.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise TimeoutError(f"child {popen.pid} not ready within {timeout} s")
        chunk = os.read(fd, 4096)
        if not chunk:
            raise RuntimeError(f"child {popen.pid} exited before it was ready: {popen.wait()}")
        buf += chunk
    popen.stdout.close()
    info: dict[str, Any] = json.loads(buf)
    return info


def reap(pid: int, timeout: float = 10.0) -> int | None:
    """SIGKILL our child ``pid`` (and the grandchildren it reported) if still running, then
    reap it; returns its exit status (``Popen.returncode``), ``None`` if it was not ours."""
    child = _live.pop(pid, None)
    if child is None:
        return None
    for fd in child.grandchild_pidfds:
        try:
            signal.pidfd_send_signal(fd, signal.SIGKILL)
        except ProcessLookupError:
            pass
        finally:
            os.close(fd)
    child.grandchild_pidfds = ()
    if child.popen.returncode is None and not has_exited(pid):
        # Not reaped yet, so the pid still names our child: kill(2) is safe here.
        os.kill(pid, signal.SIGKILL)
    return child.popen.wait(timeout)


def reap_children() -> None:
    """Reap every child still registered (at exit, and from :class:`Children`)."""
    for pid in list(_live):
        reap(pid)


atexit.register(reap_children)


class Children:
    """Spawns children for one test and reaps them all when it ends."""

    def __init__(self) -> None:
        self.pids: list[int] = []

    def spawn(self, **kwargs: Any) -> Child:
        child = spawn_child(**kwargs)
        self.pids.append(child.pid)
        return child

    def __enter__(self) -> Children:
        return self

    def __exit__(self, *exc: object) -> None:
        for pid in self.pids:
            reap(pid)


NS_LAST_PID = "/proc/sys/kernel/ns_last_pid"


def can_choose_pids() -> bool:
    """Whether this process may set the next pid (Linux, CAP_SYS_ADMIN or
    CAP_CHECKPOINT_RESTORE in its pid namespace: root in a VM or a privileged container)."""
    return sys.platform == "linux" and os.access(NS_LAST_PID, os.W_OK)


def spawn_child_at_pid(pid: int, *, attempts: int = 50, **kwargs: Any) -> Child:
    """Start a child that gets exactly ``pid`` (which must be free): real pid reuse, the way
    CRIU restores processes, by writing ``pid - 1`` to ns_last_pid just before the fork.

    Another process on the host may fork in between and take the pid; then the child we got
    is reaped and we try again, up to ``attempts`` times (``RuntimeError`` after that)."""
    for _ in range(attempts):
        with open(NS_LAST_PID, "w") as f:
            f.write(str(pid - 1))
        child = spawn_child(**kwargs)
        if child.pid == pid:
            return child
        reap(child.pid)
    raise RuntimeError(f"could not get pid {pid} in {attempts} attempts")
