"""Per-model memory on the object: the ``metalmem.io/memory`` annotation.

The InferenceService status schema has no per-process memory fields, and a real API server
prunes unknown status fields (reference/llmkube-cluster.md), so what the agent samples of each
object's processes goes where it survives: an annotation of ours, a JSON object::

    {"footprint": 4294967296, "rss": 4101234688, "wired": null, "swap": 0, "gpu": null,
     "pids": [4242], "node": "mac-1", "time": "2026-12-06T03:00:00Z"}

(bytes, summed over the object's processes on this node; ``null`` where unknown; ``gpu`` is
per-process GPU memory, which no sampler reports today: on Apple silicon ``footprint`` already
counts a process's Metal buffers). A merge patch of that one key, without a resourceVersion:
nothing else on the object is touched, and no metadata write bumps ``generation``.

**When** (the write rate is the point: every write is a watch event for every controller of the
resource): on a *meaningful change* — the pids changed, a value became known or unknown, or the
footprint (RSS where there is no footprint) moved by at least ``min_change`` (10 %) *and*
``min_change_bytes`` (64 MiB) since the last write — but never more than once per
``min_interval`` (60 s) per object; and on a *slow period* (``heartbeat``, 10 min) so the time
it carries is never older than that. For 100 objects that is at most 100 writes a minute
(1.7/s) while every model's memory keeps moving, and 10 a minute (0.17/s) while it holds.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from ..sampler import ProcessMemory
from ..targets import KubeRef
from .api import Api, CallFailed, Failures, WriteKind, WriteResult
from .condition import human, rfc3339
from .objects import MEMORY_ANNOTATION, ObjectStore

if TYPE_CHECKING:
    from ..state import State

__all__ = [
    "MEMORY_ANNOTATION",
    "AnnotationPolicy",
    "MemoryAnnotations",
    "MemoryNote",
    "notes_of",
]

log = logging.getLogger("metalmem.kube")

_FIELDS = ("footprint", "rss", "wired", "swap", "gpu")


@dataclasses.dataclass(frozen=True, slots=True)
class AnnotationPolicy:
    """When the annotation is written (see the module docstring); seconds and a fraction."""

    min_change: float = 0.10
    min_change_bytes: int = 64 << 20
    min_interval: float = 60.0
    heartbeat: float = 600.0


@dataclasses.dataclass(frozen=True, slots=True)
class MemoryNote:
    """One object's processes on this node, as sampled at ``time_unix``."""

    footprint: int | None
    rss: int | None
    wired: int | None
    swap: int | None
    gpu: int | None
    pids: tuple[int, ...]
    time_unix: float

    @classmethod
    def of(cls, records: Iterable[ProcessMemory], time_unix: float) -> MemoryNote:
        """Sum per field over ``records``; a field is unknown when any process lacks it."""
        recs = sorted(records, key=lambda r: r.pid)
        sums: dict[str, int | None] = {}
        for field in _FIELDS:
            values: list[int | None] = [getattr(r, field, None) for r in recs]
            known = [v for v in values if v is not None]
            sums[field] = sum(known) if recs and len(known) == len(values) else None
        return cls(
            sums["footprint"], sums["rss"], sums["wired"], sums["swap"], sums["gpu"],
            tuple(r.pid for r in recs), time_unix,
        )  # fmt: skip

    def size(self) -> int | None:
        return self.footprint if self.footprint is not None else self.rss

    def moved(self, before: MemoryNote, policy: AnnotationPolicy) -> bool:
        """Whether this note differs meaningfully from ``before``."""
        if self.pids != before.pids:
            return True
        if any((getattr(self, f) is None) != (getattr(before, f) is None) for f in _FIELDS):
            return True
        now, then = self.size(), before.size()
        if now is None or then is None:
            return False
        delta = abs(now - then)
        return delta >= policy.min_change_bytes and delta >= policy.min_change * max(then, 1)

    def to_json(self, node: str) -> str:
        doc: dict[str, Any] = {f: getattr(self, f) for f in _FIELDS}
        doc.update(pids=list(self.pids), node=node, time=rfc3339(self.time_unix))
        return json.dumps(doc, sort_keys=True, separators=(",", ":"))

    def summary(self, node: str) -> str:
        """For the condition message."""
        return (
            f"this object's processes on {node}: footprint {human(self.footprint)}, rss "
            f"{human(self.rss)}, wired {human(self.wired)}, swap {human(self.swap)} "
            f"(sampled {rfc3339(self.time_unix)})"
        )


def notes_of(
    state: State, ref_of: Callable[[Any], KubeRef | None], wall: Callable[[], float]
) -> dict[KubeRef, MemoryNote]:
    """One note per object from a watchdog sample: its targets' processes, summed."""
    per_ref: dict[KubeRef, list[ProcessMemory]] = {}
    for t in state.targets:
        ref = ref_of(t)
        rec = state.processes.get(t.key) if ref is not None else None
        if ref is not None and isinstance(rec, ProcessMemory):
            per_ref.setdefault(ref, []).append(rec)
    if not per_ref:
        return {}
    now = wall()
    return {ref: MemoryNote.of(recs, now) for ref, recs in per_ref.items()}


class MemoryAnnotations:
    """The latest note per object (the listener sets it) and the annotation writes (worker)."""

    def __init__(
        self,
        store: ObjectStore,
        node: str,
        clock: Callable[[], float],
        policy: AnnotationPolicy | None = None,
    ) -> None:
        self.policy = policy or AnnotationPolicy()
        self._store = store
        self._node = node
        self._clock = clock
        self._lock = threading.Lock()
        self._latest: dict[KubeRef, MemoryNote] = {}
        # worker-only state
        self._written: dict[KubeRef, tuple[MemoryNote, float]] = {}

    def note(self, ref: KubeRef, note: MemoryNote) -> None:
        with self._lock:
            self._latest[ref] = note

    def summary(self, ref: KubeRef) -> str | None:
        """The object's memory for the condition message, or None before the first sample."""
        note = self._latest.get(ref)
        return note.summary(self._node) if note is not None else None

    def forget(self, ref: KubeRef) -> None:
        """Write the annotation again at the next step (the object was recreated)."""
        self._written.pop(ref, None)

    def _due(self, ref: KubeRef, note: MemoryNote, now: float) -> bool:
        last = self._written.get(ref)
        if last is None:
            return True
        before, at = last
        if now - at >= self.policy.heartbeat:
            return True
        return now - at >= self.policy.min_interval and note.moved(before, self.policy)

    def sync(self, api: Api, failures: Failures) -> bool:
        """Write one due annotation; False when none is due."""
        now = self._clock()
        with self._lock:
            latest = list(self._latest.items())
        for ref, note in latest:
            if self._store.is_missing(ref) or self._store.get(ref) is None:
                continue  # not read yet (or gone): the refresh comes first
            if not self._due(ref, note, now):
                continue
            self._write(api, failures, ref, note, now)
            return True
        return False

    def _write(
        self, api: Api, failures: Failures, ref: KubeRef, note: MemoryNote, now: float
    ) -> None:
        body = {"metadata": {"annotations": {MEMORY_ANNOTATION: note.to_json(self._node)}}}
        try:
            obj = api.merge_patch(ref, body)
        except CallFailed as exc:
            if exc.transient:
                failures.stats.kube_write(WriteKind.ANNOTATION, exc.result)
                raise
            failures.count(WriteKind.ANNOTATION, exc, ref, verb="patch")
            self._written[ref] = (note, now)  # not retried before the next one is due
            return
        self._store.remember(ref, obj)
        self._written[ref] = (note, now)
        failures.stats.kube_write(WriteKind.ANNOTATION, WriteResult.SUCCESS)
        log.debug("event=kube_memory_annotation ref=%s/%s footprint=%s", ref.namespace,
                  ref.name, note.footprint)  # fmt: skip
