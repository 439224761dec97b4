"""Object metadata: what the reporter keeps of each object, and what the safety gate may trust.

:class:`ObjectStore` holds the latest read (or write: a write returns the whole object) of each
object, the objects known not to exist, and which objects a refresh has tried to read.
:class:`MetadataCache` keeps, per object, the priority and protection its spec last said and
when: the safety gate (issue 13) may stop a Kubernetes target only on facts read within the
refresh period or, while the API server is unreachable, as last read. The last read values are
kept in ``state_dir/kube-metadata.json`` so that an agent restarted during an API outage still
knows which objects were protected; an object never read in this run nor kept from an earlier
one is unknown, and its target is never stopped.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from ..gate import KubeFacts
from ..statefile import StateFileError, read_state, write_state
from ..targets import KubeRef, Metadata, Priority, Target
from .api import Api, CallFailed, Failures, WriteResult

__all__ = ["MetadataCache", "ObjectInfo", "ObjectStore", "SpecFields", "info_from"]

log = logging.getLogger("metalmem.kube")

SUSPEND_ANNOTATION = "metalmem.io/suspended"
CONDITION_TYPE = "MemoryPressure"
MEMORY_ANNOTATION = "metalmem.io/memory"


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


@dataclasses.dataclass(frozen=True, slots=True)
class ObjectInfo:
    """What the reporter keeps of one object from its latest read or write."""

    api_version: str
    kind: str
    uid: str | None
    generation: int | None
    resource_version: str | None
    priority: str | None
    protected: bool | None
    suspended: bool
    annotation: dict[str, Any] | None  # ours, parsed; None when absent or unreadable
    has_annotation: bool
    condition: Mapping[str, Any] | None  # the stored MemoryPressure condition
    condition_owners: frozenset[str] = frozenset()  # field managers of that entry
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict)
    memory: str | None = None  # our metalmem.io/memory annotation, as stored


def condition_owners(obj: Mapping[str, Any], ctype: str = CONDITION_TYPE) -> frozenset[str]:
    """The field managers (``metadata.managedFields``) that own any field of the ``ctype``
    entry of ``status.conditions``: who else writes the condition we write."""
    owners = set()
    for entry in (obj.get("metadata") or {}).get("managedFields") or ():
        if not isinstance(entry, dict):
            continue
        fields = ((entry.get("fieldsV1") or {}).get("f:status") or {}).get("f:conditions") or {}
        for key in fields if isinstance(fields, dict) else ():
            if not key.startswith("k:"):
                continue
            try:
                item = json.loads(key[2:])
            except ValueError:
                continue
            if isinstance(item, dict) and item.get("type") == ctype:
                owners.add(str(entry.get("manager") or ""))
    return frozenset(owners)


def info_from(obj: Mapping[str, Any]) -> ObjectInfo:
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    annotations = meta.get("annotations") or {}
    raw = annotations.get(SUSPEND_ANNOTATION)
    parsed: dict[str, Any] | None = None
    if raw is not None:
        try:
            value = json.loads(raw)
            parsed = value if isinstance(value, dict) else {}
        except ValueError:
            parsed = {}
    condition = next(
        (
            c
            for c in (obj.get("status") or {}).get("conditions") or ()
            if isinstance(c, dict) and c.get("type") == CONDITION_TYPE
        ),
        None,
    )
    priority = spec.get("priority")
    protected = spec.get("evictionProtection")
    return ObjectInfo(
        api_version=str(obj.get("apiVersion", "")),
        kind=str(obj.get("kind", "")),
        uid=meta.get("uid"),
        generation=meta.get("generation"),
        resource_version=meta.get("resourceVersion"),
        priority=priority if isinstance(priority, str) else None,
        protected=protected if isinstance(protected, bool) else None,
        suspended=spec.get("suspend") is True,
        annotation=parsed,
        has_annotation=raw is not None,
        condition=condition,
        condition_owners=condition_owners(obj),
        labels={**annotations, **(meta.get("labels") or {})},
        memory=annotations.get(MEMORY_ANNOTATION),
    )


class ObjectStore:
    """The latest read of each object, the objects known not to exist, and the objects a
    refresh has tried to read. The worker and the suspend path write; any thread reads (a
    snapshot swapped under the lock, never I/O under it)."""

    def __init__(self, meta: MetadataCache, resource: str) -> None:
        self.meta = meta
        self._resource = resource
        self._lock = threading.Lock()
        self._objects: Mapping[KubeRef, ObjectInfo] = {}
        self._missing: frozenset[KubeRef] = frozenset()
        self._attempted: frozenset[KubeRef] = frozenset()
        self.on_recreated: Callable[[KubeRef], None] = lambda ref: None

    def get(self, ref: KubeRef) -> ObjectInfo | None:
        return self._objects.get(ref)

    def is_missing(self, ref: KubeRef) -> bool:
        return ref in self._missing

    def was_attempted(self, ref: KubeRef) -> bool:
        """Whether a refresh has tried to read ``ref`` (else it is still being read first)."""
        return ref in self._attempted

    def remember(self, ref: KubeRef, obj: Mapping[str, Any]) -> ObjectInfo:
        info = info_from(obj)
        with self._lock:
            self._objects = {**self._objects, ref: info}
        self.meta.seen(ref, SpecFields(info.priority, info.protected))
        return info

    def set_missing(self, ref: KubeRef, why: str) -> None:
        with self._lock:
            if ref in self._missing:
                return
            self._missing = self._missing | {ref}
            self._objects = {r: i for r, i in self._objects.items() if r != ref}
        log.warning(
            "event=kube_object_missing ref=%s/%s resource=%s reason=%s action=keep_local_settings",
            ref.namespace, ref.name, self._resource, why,
        )  # fmt: skip

    def found(self, ref: KubeRef, obj: Mapping[str, Any]) -> ObjectInfo:
        """A read of ``ref``. An object that was missing, or was recreated (another uid), is
        handed to :attr:`on_recreated` (it gets the current condition again)."""
        before = self._objects.get(ref)
        info = self.remember(ref, obj)
        if ref in self._missing or (before is not None and before.uid != info.uid):
            with self._lock:
                self._missing = self._missing - {ref}
            self.on_recreated(ref)
            log.info("event=kube_object_found ref=%s/%s uid=%s", ref.namespace, ref.name,
                     info.uid)  # fmt: skip
        return info

    def fetch(self, api: Api, failures: Failures, ref: KubeRef) -> ObjectInfo | None:
        """Read one object now; None when it is missing or may not be read. Transient
        failures raise :class:`CallFailed`."""
        try:
            return self.found(ref, api.get(ref))
        except CallFailed as exc:
            if exc.transient:
                raise
            if exc.result is WriteResult.NOT_FOUND:
                self.set_missing(ref, "not found")
            else:
                failures.count(None, exc, ref, verb="get")
            return None

    def refresh(
        self, api: Api, failures: Failures, refs: list[KubeRef]
    ) -> dict[KubeRef, ObjectInfo]:
        """Re-read ``refs`` (one list per namespace; a get each if list is not allowed) and
        return what was read. Objects that are gone keep their targets' local settings."""
        by_ns: dict[str, list[KubeRef]] = collections.defaultdict(list)
        for ref in refs:
            by_ns[ref.namespace].append(ref)
        read: dict[KubeRef, ObjectInfo] = {}
        for ns, wanted in by_ns.items():
            try:
                items = {str((o.get("metadata") or {}).get("name")): o for o in api.list(ns)}
            except CallFailed as exc:
                if exc.transient:
                    raise
                failures.count(None, exc, None, verb="list")
                for ref in wanted:
                    info = self.fetch(api, failures, ref)
                    if info is not None:
                        read[ref] = info
                continue
            for ref in wanted:
                if ref.name in items:
                    read[ref] = self.found(ref, items[ref.name])
                else:
                    self.set_missing(ref, "not found")
        with self._lock:
            self._attempted = self._attempted | frozenset(refs)
        return read
