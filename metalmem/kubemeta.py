"""What each Kubernetes target's object says about its priority and protection, and since when.

The safety gate (issue 13) may stop a Kubernetes target only on facts read from its object:
within the refresh period, or, while the API server is unreachable, as last read. The last read
values are kept in ``state_dir/kube-metadata.json`` so that an agent restarted during an API
outage still knows which objects were protected; an object never read in this run nor kept
from an earlier one is unknown, and its target is never stopped.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from .gate import KubeFacts
from .statefile import StateFileError, read_state, write_state
from .targets import KubeRef, Metadata, Priority, Target

__all__ = ["MetadataCache", "SpecFields"]


@dataclasses.dataclass(frozen=True, slots=True)
class SpecFields:
    """``spec.priority`` and ``spec.evictionProtection`` as the object has them (``None``: the
    object does not set the field, so the target's local setting holds)."""

    priority: str | None
    protected: bool | None

    def facts(self, local: Target, source: Metadata) -> KubeFacts:
        """The object's priority where it sets one, else the local one. Protection is the
        union: the ``[[target]]`` or the object can protect, and neither can lift what the
        other set (the CRD may default ``evictionProtection: false``; that must not unprotect
        a model its operator protected on the host)."""
        priority = Priority.parse(self.priority) if self.priority is not None else local.priority
        return KubeFacts(priority, local.protected or self.protected is True, source)


class MetadataCache:
    """Read times and last-read spec fields per object; thread-safe (the Kubernetes worker
    writes, the watchdog thread reads)."""

    FILE = "kube-metadata.json"

    def __init__(
        self,
        state_dir: str | None,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._path = os.path.join(state_dir, self.FILE) if state_dir else None
        self._clock = clock
        self._wall = wall
        self._lock = threading.Lock()
        self._read_at: dict[KubeRef, float] = {}
        loaded = read_state(self._path, _check)
        self._last: dict[KubeRef, SpecFields] = dict(loaded or {})

    def seen(self, ref: KubeRef, fields: SpecFields) -> None:
        """``ref`` was just read (or written: a write returns the whole object)."""
        with self._lock:
            self._read_at[ref] = self._clock()
            changed = self._last.get(ref) != fields
            self._last[ref] = fields
            doc = _doc(self._last, self._wall()) if changed else None
        if doc is not None:
            write_state(self._path, doc)

    def facts(
        self, ref: KubeRef, local: Target, *, max_age: float, reachable: bool
    ) -> KubeFacts | None:
        """The object's facts: read within ``max_age`` seconds, or as last read while the API
        is not ``reachable``; ``None`` when neither holds."""
        with self._lock:
            fields = self._last.get(ref)
            read_at = self._read_at.get(ref)
        if fields is None:
            return None
        if read_at is not None and self._clock() - read_at <= max_age:
            return fields.facts(local, Metadata.READ)
        if not reachable:
            return fields.facts(local, Metadata.LAST_KNOWN)
        return None


def _doc(last: Mapping[KubeRef, SpecFields], now: float) -> dict[str, Any]:
    return {
        "version": 1,
        "written_unix": now,
        "objects": {
            f"{r.namespace}/{r.name}": {"priority": f.priority, "protected": f.protected}
            for r, f in sorted(last.items(), key=lambda kv: (kv[0].namespace, kv[0].name))
        },
    }


def _check(doc: Any) -> dict[KubeRef, SpecFields]:
    if not isinstance(doc, dict) or not isinstance(doc.get("objects"), dict):
        raise StateFileError('expected {"version": 1, "objects": {"NS/NAME": {...}}}')
    out: dict[KubeRef, SpecFields] = {}
    for key, value in doc["objects"].items():
        ns, sep, name = str(key).partition("/")
        if not (sep and ns and name) or not isinstance(value, dict):
            raise StateFileError(f"objects[{key!r}] is not NAMESPACE/NAME with an object")
        priority, protected = value.get("priority"), value.get("protected")
        if priority is not None and not isinstance(priority, str):
            raise StateFileError(f"objects[{key!r}].priority is {priority!r}, not a name")
        if protected is not None and not isinstance(protected, bool):
            raise StateFileError(f"objects[{key!r}].protected is {protected!r}, not a boolean")
        out[KubeRef(ns, name)] = SpecFields(priority, protected)
    return out
