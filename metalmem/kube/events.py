"""Events (``events.k8s.io/v1``) about each object, and their series.

Listeners :meth:`EventSink.post` events into a bounded queue (the oldest is dropped when it is
full, counted); the worker sends one per step. A repeat of the same event (object, reason,
action, type, detail) within ``series_window`` updates the first one's ``series`` instead of
creating another.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import enum
import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

from ..targets import KubeRef
from .api import Api, CallFailed, Failures, KubeStats, WriteKind, WriteResult
from .condition import truncate
from .objects import ObjectInfo, ObjectStore
from .options import KubeOptions, Resource

__all__ = ["REPORTING_CONTROLLER", "EventItem", "EventReason", "EventSink", "microtime"]

log = logging.getLogger("metalmem.kube")

REPORTING_CONTROLLER = "metalmem.io/agent"
_NOTE_LIMIT = 1024  # events.k8s.io/v1 rejects a longer note
_CONFLICT_RETRIES = 3


class EventReason(enum.StrEnum):
    """``reason`` of the events the reporter writes; each has one ``action`` (see _ACTIONS)."""

    LEVEL_CHANGED = "MemoryPressureLevelChanged"
    EVICTING = "Evicting"
    EVICTED = "Evicted"
    EVICTION_SKIPPED = "EvictionSkipped"
    RESPAWN_BLOCKED = "RespawnBlocked"
    RESPAWN_UNBLOCKED = "RespawnUnblocked"
    SUSPENDED = "Suspended"
    RESUMED = "Resumed"


_ACTIONS: Mapping[EventReason, str] = {
    EventReason.LEVEL_CHANGED: "ObserveMemoryPressure",
    EventReason.EVICTING: "Evict",
    EventReason.EVICTED: "Evict",
    EventReason.EVICTION_SKIPPED: "Evict",
    EventReason.RESPAWN_BLOCKED: "BlockRespawn",
    EventReason.RESPAWN_UNBLOCKED: "UnblockRespawn",
    EventReason.SUSPENDED: "Suspend",
    EventReason.RESUMED: "Resume",
}


def microtime(unix: float) -> str:
    """metav1.MicroTime: RFC 3339 with exactly six fractional digits, UTC."""
    dt = datetime.datetime.fromtimestamp(unix, datetime.UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclasses.dataclass(frozen=True, slots=True)
class EventItem:
    ref: KubeRef
    reason: EventReason
    type: str  # Normal | Warning
    note: str
    detail: str  # with (ref, reason, action, type): what makes two events "the same"
    time_unix: float


@dataclasses.dataclass(slots=True)
class _Series:
    namespace: str
    name: str
    count: int
    last_unix: float


class EventSink:
    """The event queue (any thread posts) and its sender (the worker)."""

    def __init__(
        self, options: KubeOptions, resource: Resource, store: ObjectStore, stats: KubeStats
    ) -> None:
        self._options = options
        self._resource = resource
        self._store = store
        self._stats = stats
        self._lock = threading.Lock()
        self._events: collections.deque[EventItem] = collections.deque()
        # worker-only state
        self._series: dict[tuple[Any, ...], _Series] = {}
        self._last_event_ns = 0

    def post(self, item: EventItem) -> None:
        dropped = 0
        with self._lock:
            while len(self._events) >= self._options.queue_size:
                self._events.popleft()
                dropped += 1
            self._events.append(item)
        if dropped:
            self._stats.kube_dropped(dropped)
            log.debug("event=kube_event_dropped n=%d reason=queue_full", dropped)

    def send_one(self, api: Api, failures: Failures) -> bool:
        """Send the oldest event; False when there is none. On a transient failure it goes
        back to the head (unless newer events filled the queue) and the failure is raised."""
        with self._lock:
            if not self._events:
                return False
            item = self._events.popleft()
        if self._store.is_missing(item.ref):
            return True
        try:
            self._write(api, failures, item)
        except CallFailed:
            with self._lock:
                if len(self._events) < self._options.queue_size:
                    self._events.appendleft(item)
                else:
                    self._stats.kube_dropped(1)
            raise
        return True

    def _event_name(self, ref: KubeRef) -> str:
        ns = max(time.time_ns(), self._last_event_ns + 1)
        self._last_event_ns = ns
        return f"{ref.name}.{ns:x}"

    def _write(self, api: Api, failures: Failures, item: EventItem) -> None:
        info = self._store.get(item.ref) or self._store.fetch(api, failures, item.ref)
        if info is None:
            return
        action = _ACTIONS[item.reason]
        key = (item.ref, item.reason, action, item.type, item.detail)
        window = self._options.series_window
        self._series = {
            k: s for k, s in self._series.items() if item.time_unix - s.last_unix <= window
        }
        series = self._series.get(key)
        try:
            if series is not None:
                series.count += 1
                series.last_unix = item.time_unix
                try:
                    api.patch_event(
                        series.namespace,
                        series.name,
                        {"series": {"count": series.count,
                                    "lastObservedTime": microtime(item.time_unix)}},
                    )  # fmt: skip
                    self._stats.kube_write(WriteKind.EVENT, WriteResult.SUCCESS)
                    return
                except CallFailed as exc:
                    if exc.result is not WriteResult.NOT_FOUND:
                        series.count -= 1
                        raise
                    del self._series[key]  # expired or deleted: start a new one
            name = self._create(api, item, info, action)
            self._series[key] = _Series(item.ref.namespace, name, 1, item.time_unix)
            self._stats.kube_write(WriteKind.EVENT, WriteResult.SUCCESS)
        except CallFailed as exc:
            if exc.transient:
                self._stats.kube_write(WriteKind.EVENT, exc.result)
                raise
            failures.count(WriteKind.EVENT, exc, None, verb="create")

    def _create(self, api: Api, item: EventItem, info: ObjectInfo, action: str) -> str:
        regarding: dict[str, Any] = {
            "apiVersion": info.api_version or self._resource.api_version,
            "kind": info.kind,
            "name": item.ref.name,
            "namespace": item.ref.namespace,
        }
        if info.uid:
            regarding["uid"] = info.uid
        for _ in range(_CONFLICT_RETRIES):
            name = self._event_name(item.ref)
            body = {
                "apiVersion": "events.k8s.io/v1",
                "kind": "Event",
                "metadata": {"name": name, "namespace": item.ref.namespace},
                "eventTime": microtime(item.time_unix),  # MicroTime: exactly six digits
                "reportingController": REPORTING_CONTROLLER,
                "reportingInstance": self._options.node_name,
                "action": action,
                "reason": item.reason.value,
                "type": item.type,
                "note": truncate(item.note, _NOTE_LIMIT),
                "regarding": regarding,
            }
            try:
                api.create_event(item.ref.namespace, body)
            except CallFailed as exc:
                if exc.result is WriteResult.CONFLICT:  # the name exists: take another
                    continue
                raise
            log.debug("event=kube_event ref=%s/%s reason=%s name=%s", item.ref.namespace,
                      item.ref.name, item.reason, name)  # fmt: skip
            return name
        raise CallFailed(WriteResult.CONFLICT, 409, "create events: names kept colliding",
                         transient=False)  # fmt: skip
