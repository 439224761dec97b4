"""The ``MemoryPressure`` condition: what each object should carry, and writing it.

The condition is *state*, not a queue item: :class:`ConditionSync` writes the current desired
condition of each object whenever it differs from the last one written, so after an outage the
current condition is written, not the history. It is written by server-side apply of our one
list-map entry (field manager ``metalmem``, forced), so other conditions are never touched.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import enum
import logging
import threading
from collections.abc import Callable
from typing import Any

from ..level import Level
from ..pressure import Assessment
from ..sampler import SystemMemory
from ..targets import KubeRef
from ..units import human_bytes
from .api import FIELD_MANAGER, Api, CallFailed, Failures, WriteKind, WriteResult
from .objects import CONDITION_TYPE, ObjectInfo, ObjectStore
from .options import Resource

__all__ = [
    "CONDITION_TYPE",
    "ConditionReason",
    "ConditionSync",
    "Desired",
    "condition_for",
    "describe",
    "human",
    "rfc3339",
]

log = logging.getLogger("metalmem.kube")


class ConditionReason(enum.StrEnum):
    """``reason`` of the ``MemoryPressure`` condition."""

    NORMAL = "Normal"
    WARNING = "Warning"
    CRITICAL = "Critical"
    EVICTED = "Evicted"


def condition_for(level: Level, evicted: bool = False) -> tuple[str, ConditionReason]:
    """(status, reason) of ``MemoryPressure``: True for WARNING/CRITICAL, False for NORMAL;
    ``Evicted`` for an object whose process metalmem stopped while the pressure lasts."""
    if level == Level.NORMAL:
        return "False", ConditionReason.NORMAL
    if evicted:
        return "True", ConditionReason.EVICTED
    return "True", (
        ConditionReason.CRITICAL if level == Level.CRITICAL else ConditionReason.WARNING
    )


def human(n: int | None) -> str:
    """Bytes for a message: ``4.0 GiB``; ``unknown`` for ``None``."""
    return human_bytes(n, unknown="unknown")


def describe(level: Level, system: SystemMemory | None, assessment: Assessment | None) -> str:
    """The condition message: the level, available of total, and the top signal's message."""
    parts = []
    if system is not None and system.available is not None and system.total:
        share = 100.0 * system.available / system.total
        parts.append(f"available {human(system.available)} of {human(system.total)} ({share:.1f}%)")
    top = assessment.top_reason if assessment is not None else None
    if top is not None:
        parts.append(f"top signal {top.signal.value}: {top.message}")
    return f"{level.name}: " + ("; ".join(parts) if parts else "no sample yet")


def rfc3339(unix: float) -> str:
    """metav1.Time: RFC 3339 in whole seconds, UTC."""
    return datetime.datetime.fromtimestamp(unix, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def truncate(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` bytes of UTF-8, marked with ``...``."""
    data = text.encode()
    if len(data) <= limit:
        return text
    return data[: limit - 3].decode(errors="ignore") + "..."


@dataclasses.dataclass(frozen=True, slots=True)
class Desired:
    """The condition an object should carry now; ``since_unix`` is when ``status`` took
    this value (its lastTransitionTime unless the object already has the same status)."""

    status: str
    reason: ConditionReason
    message: str
    since_unix: float


class ConditionSync:
    """Desired conditions (set from the listeners) and the ones written (by the worker)."""

    def __init__(
        self,
        resource: Resource,
        store: ObjectStore,
        wall: Callable[[], float],
        memory: Callable[[KubeRef], str | None] = lambda ref: None,
    ) -> None:
        self._resource = resource
        self._memory = memory
        self._store = store
        self._wall = wall
        self._lock = threading.Lock()
        self._desired: dict[KubeRef, Desired] = {}
        self._evicted: set[KubeRef] = set()
        # worker-only state
        self._written: dict[KubeRef, Desired] = {}
        self._written_condition: dict[KubeRef, dict[str, Any]] = {}
        self._history: dict[KubeRef, collections.deque[dict[str, Any]]] = {}
        self._told: set[str] = set()  # other writers of the condition type, logged once each
        self.other_writers: frozenset[str] = frozenset()

    # --- listeners ---------------------------------------------------------------------------
    def has_desired(self, ref: KubeRef) -> bool:
        return ref in self._desired

    def want(self, ref: KubeRef, level: Level, message: str, *, evicted: bool = False) -> None:
        """Set what ``ref`` should carry at ``level`` (``evicted``: its process was stopped
        by metalmem under this pressure, remembered until NORMAL)."""
        with self._lock:
            if evicted:
                self._evicted.add(ref)
            if level == Level.NORMAL:
                self._evicted.clear()
            status, reason = condition_for(level, ref in self._evicted)
            prev = self._desired.get(ref)
            same = prev is not None and prev.status == status
            since = prev.since_unix if same and prev is not None else self._wall()
            self._desired[ref] = Desired(status, reason, message, since)

    # --- worker ------------------------------------------------------------------------------
    def forget(self, ref: KubeRef) -> None:
        """Write ``ref``'s condition again (the object was recreated, or lost our entry)."""
        self._written.pop(ref, None)
        self._written_condition.pop(ref, None)

    def heal(self, read: dict[KubeRef, ObjectInfo], failures: Failures) -> int:
        """After a refresh: where an object's entry is not the one we last applied (another
        writer removed it, replaced the list, or wrote the type), write ours again at the next
        :meth:`sync`: at most once per refresh per object, counted by cause (``removed``,
        ``stale``: an older one of ours, ``changed``: someone else's content). Another field
        manager owning the entry with content not ours is told once per manager."""
        restored = 0
        for ref, info in read.items():
            ours = self._written_condition.get(ref)
            if ours is None:
                continue
            entry = info.condition
            if entry is not None and _same(entry, ours):
                continue
            if entry is None:
                cause = "removed"
            elif any(_same(entry, old) for old in self._history.get(ref, ())):
                cause = "stale"
            else:
                cause = "changed"
                self._tell(ref, info, failures)
            self._written.pop(ref, None)
            restored += 1
            failures.stats.kube_condition_restored(cause)
            log.info("event=kube_condition_restore ref=%s/%s cause=%s", ref.namespace, ref.name,
                     cause)  # fmt: skip
        return restored

    def _tell(self, ref: KubeRef, info: ObjectInfo, failures: Failures) -> None:
        others = info.condition_owners - {FIELD_MANAGER}
        new = others - self._told
        if not others:
            return
        self.other_writers = self.other_writers | others
        for manager in sorted(new):
            self._told.add(manager)
            failures.stats.kube_condition_other_writer(manager)
            log.warning(
                "event=kube_condition_other_writer ref=%s/%s type=%s manager=%r hint=%r",
                ref.namespace, ref.name, CONDITION_TYPE, manager,
                "another agent writes this condition (LLMKube's metal agent: its memory "
                "watchdog, --memory-watchdog-interval=0 turns it off; docs/kubernetes.md)",
            )  # fmt: skip

    def sync(self, api: Api, failures: Failures) -> bool:
        """Write every desired condition that differs from the last one written."""
        with self._lock:
            todo = [
                (r, d)
                for r, d in self._desired.items()
                if self._written.get(r) != d and not self._store.is_missing(r)
            ]
        for ref, desired in todo:
            self._write(api, failures, ref, desired)
        return bool(todo)

    def _write(self, api: Api, failures: Failures, ref: KubeRef, desired: Desired) -> None:
        info = self._store.get(ref) or self._store.fetch(api, failures, ref)
        if info is None:  # missing, or it may not be read: not retried until the next change
            self._written[ref] = desired
            return
        previous = self._written_condition.get(ref) or info.condition
        transition = rfc3339(desired.since_unix)
        if previous is not None and previous.get("status") == desired.status:
            transition = str(previous.get("lastTransitionTime") or transition)
        memory = self._memory(ref)
        message = desired.message if memory is None else f"{desired.message}; {memory}"
        condition: dict[str, Any] = {
            "type": CONDITION_TYPE,
            "status": desired.status,
            "reason": desired.reason.value,
            "message": truncate(message, 32768),
            "lastTransitionTime": transition,
        }
        if info.generation is not None:
            condition["observedGeneration"] = info.generation
        body = {
            "apiVersion": self._resource.api_version,
            "kind": info.kind,
            "metadata": {"name": ref.name, "namespace": ref.namespace},
            "status": {"conditions": [condition]},
        }
        try:
            obj = api.apply_status(ref, body)
        except CallFailed as exc:
            if exc.transient:
                failures.stats.kube_write(WriteKind.CONDITION, exc.result)
                raise
            failures.count(WriteKind.CONDITION, exc, ref, verb="patch")
            self._written[ref] = desired  # not retried until the desired condition changes
            return
        self._store.remember(ref, obj)
        self._written[ref] = desired
        self._written_condition[ref] = condition
        self._history.setdefault(ref, collections.deque(maxlen=8)).append(condition)
        failures.stats.kube_write(WriteKind.CONDITION, WriteResult.SUCCESS)
        log.info(
            "event=kube_condition ref=%s/%s status=%s reason=%s last_transition=%s",
            ref.namespace, ref.name, desired.status, desired.reason, transition,
        )  # fmt: skip


def _same(entry: Any, ours: dict[str, Any]) -> bool:
    """Whether a stored condition entry is the one we applied (every field we set)."""
    return isinstance(entry, dict) and all(entry.get(k) == v for k, v in ours.items())
