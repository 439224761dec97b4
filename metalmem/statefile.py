"""Small JSON state files in the agent's state dir: read, check, write atomically.

Every file the agent keeps across restarts (respawn blocks, ``pid =`` pins, the last-read
Kubernetes metadata) goes through here, so a bad file is handled one way: one ERROR line naming
the file and what is wrong, the file moved aside as ``NAME.bad-<unix time>`` (kept for the
operator, never silently overwritten), and a start with nothing in it.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = ["StateFileError", "boot_id", "read_state", "write_state"]

log = logging.getLogger(__name__)

_MAX_BYTES = 4 << 20  # a state file is a few KiB; anything larger is not ours


class StateFileError(ValueError):
    """A state file whose content is not what we wrote; the message says what."""


def read_state(path: str | None, check: Callable[[Any], T]) -> T | None:
    """The checked content of ``path``, or ``None`` when there is none (no state dir, no file).

    ``check`` turns the parsed JSON into what the caller keeps, raising ``StateFileError`` (or
    ``ValueError``/``TypeError``/``KeyError``/``AttributeError``) where it does not fit. An
    unreadable or invalid file is logged and moved aside; ``None`` is returned.
    """
    if not path or not os.path.exists(path):
        return None
    try:
        with open(path, "rb") as f:
            raw = f.read(_MAX_BYTES + 1)
        if len(raw) > _MAX_BYTES:
            raise StateFileError(f"larger than {_MAX_BYTES} bytes")
        return check(json.loads(raw))
    except (OSError, RecursionError, ValueError, TypeError, KeyError, AttributeError) as exc:
        why = f"{type(exc).__name__}: {exc}" if not isinstance(exc, StateFileError) else str(exc)
        aside = f"{path}.bad-{int(time.time())}"
        try:
            os.replace(path, aside)
        except OSError as move:
            aside = f"(not moved: {move.strerror})"
        log.error("event=state_file_invalid path=%s error=%r moved_to=%s action=start_empty",
                  path, why[:300], aside)  # fmt: skip
        return None


def write_state(path: str | None, doc: Mapping[str, Any]) -> None:
    """Write ``doc`` atomically (temp file, fsync, rename); a failure is logged, not raised."""
    if not path:
        return
    tmp = f"{path}.tmp"
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(tmp, "w") as f:
            json.dump(doc, f, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        log.error("event=state_file_write_failed path=%s error=%r", path, exc)


def boot_id(root: str = "/") -> str | None:
    """An id of the current boot: start times count from boot, so a pin from another boot
    names nothing. Linux ``/proc/sys/kernel/random/boot_id``; macOS ``kern.bootsessionuuid``."""
    if sys.platform == "linux":
        try:
            with open(os.path.join(root, "proc/sys/kernel/random/boot_id")) as f:
                return f.read().strip() or None
        except OSError:
            return None
    try:
        out = subprocess.run(
            ["sysctl", "-n", "kern.bootsessionuuid"], capture_output=True, text=True, timeout=5,
            check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return out or None
