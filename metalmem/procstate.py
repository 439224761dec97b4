"""Whether a process that still has a pid is really alive: a zombie (exited, not yet reaped by
its parent) keeps its pid and its start time, and /proc/PID/statm reads all zeros. Counting
one as live let it hold up the eviction floor and be "evicted" every tick (issue 13)."""

from __future__ import annotations

import os
import subprocess
import sys

__all__ = ["is_zombie"]


def is_zombie(root: str, pid: int) -> bool:
    """True when ``pid`` has exited but is not reaped (state Z, or X while being reaped), or is
    gone altogether. Linux reads the state from /proc/PID/stat (the field after the last
    ``)``, since the command name may hold any byte); macOS asks ``ps`` (called on the rare
    paths only: a sample with no resident pages, and the safety gate before a stop)."""
    if sys.platform == "linux":
        try:
            with open(os.path.join(root, "proc", str(pid), "stat"), "rb") as f:
                stat = f.read(4096)
        except OSError:
            return True  # vanished while we looked
        end = stat.rfind(b")")
        return end < 0 or stat[end + 2 : end + 3] in (b"Z", b"X")
    try:
        out = subprocess.run(
            ["ps", "-o", "stat=", "-p", str(pid)], capture_output=True, text=True, timeout=5,
            check=False,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return False  # cannot tell: the caller's identity check still applies
    return not out or out.startswith("Z")
