"""Respawn blocks: the keys of evicted targets that must not come back yet, kept on disk."""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from .statefile import StateFileError, read_state, write_state

log = logging.getLogger(__name__)

__all__ = ["RespawnBlocks"]


class RespawnBlocks:
    """Keys of evicted targets that must not be respawned, persisted in ``state_dir``.

    A block is set *before* the stop (a controller cannot respawn in between, LLMKube) and
    cleared once NORMAL has held for the transition period. The file survives an agent
    restart; the NORMAL-held clock does not (monotonic time), so a restart re-waits one
    transition period: the conservative choice.
    """

    FILE = "respawn-blocks.json"

    def __init__(self, state_dir: str | None) -> None:
        self._path = os.path.join(state_dir, self.FILE) if state_dir else None
        self._lock = threading.Lock()
        loaded = read_state(self._path, _check_blocks)
        self._blocked: dict[str, dict[str, Any]] = dict(loaded or {})

    def keys(self) -> tuple[str, ...]:
        with self._lock:
            return tuple(sorted(self._blocked))

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._blocked

    def block(self, key: str, **info: Any) -> None:
        with self._lock:
            self._blocked[key] = {"since_unix": time.time(), **info}
        self.flush()

    def clear_key(self, key: str) -> None:
        with self._lock:
            found = self._blocked.pop(key, None)
        if found is not None:
            self.flush()

    def clear(self) -> tuple[str, ...]:
        with self._lock:
            cleared = tuple(sorted(self._blocked))
            self._blocked.clear()
        if cleared:
            self.flush()
        return cleared

    def flush(self) -> None:
        """Write the file atomically (temp file + rename); a failure is logged, not raised."""
        with self._lock:
            doc = {"version": 1, "blocked": dict(self._blocked)}
        write_state(self._path, doc)


def _check_blocks(doc: Any) -> dict[str, dict[str, Any]]:
    """``{"version": 1, "blocked": {key: {...}}}``: every entry an object under a string key."""
    if not isinstance(doc, dict) or not isinstance(doc.get("blocked", {}), dict):
        raise StateFileError('expected {"version": 1, "blocked": {KEY: {...}}}')
    blocked = doc.get("blocked", {})
    for key, value in blocked.items():
        if not isinstance(value, dict):
            raise StateFileError(f"blocked[{key!r}] is {type(value).__name__}, not an object")
    return {str(k): dict(v) for k, v in blocked.items()}
