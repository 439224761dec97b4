"""Suspend and resume: evicting a target through its owner, and undoing it when memory allows.

:meth:`Suspender.stop` runs on the watchdog thread during an eviction: one bounded
merge-patch of ``spec.suspend`` (plus a fresh read: the safety gate is asked right before the
patch, and one retry per conflict), then up to ``grace`` for the owner to stop the process; if
it does not, :func:`metalmem.process.stop` runs. Resuming (the worker) clears ``spec.suspend``
once the respawn block has cleared and the object's footprint fits the headroom above WARNING.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import select
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from ..errors import Error
from ..eviction import SkipReason
from ..gate import Refusal
from ..level import Level
from ..pressure import threshold_bytes
from ..process import StopRecord, StopResult, stop
from ..sampler import Sampler, SystemMemory
from ..targets import KubeRef, Metadata, Target
from .api import Api, CallFailed, Failures, WriteKind, WriteResult
from .condition import human, rfc3339
from .events import EventItem, EventReason
from .objects import SUSPEND_ANNOTATION, ObjectInfo, ObjectStore, SpecFields
from .options import KubeOptions

__all__ = ["SUSPEND_ANNOTATION", "Suspender", "admission_managed", "fits_headroom"]

log = logging.getLogger("metalmem.kube")

_CONFLICT_RETRIES = 3

Gate = Callable[[Target], Refusal | None]


def fits_headroom(footprint: int | None, system: SystemMemory | None, warning: float) -> bool:
    """Whether ``footprint`` bytes fit in the memory available above the WARNING threshold
    (``warning`` is the policy's ``warning_available`` fraction). An unknown footprint fits;
    an unknown sample does not."""
    if system is None or system.available is None or not system.total:
        return False
    if footprint is None:
        return True
    return footprint <= system.available - threshold_bytes(warning, system.total)


def admission_managed(info: ObjectInfo, labels: tuple[str, ...]) -> str | None:
    """Why ``info``'s object is an admission controller's to suspend (a label, or an
    annotation of the same name, in ``labels``), or None."""
    for key in labels:
        if key in info.labels:
            return f"admission-managed: {key}={info.labels[key]} (spec.suspend is Kueue's lever)"
    return None


def _suspend_patch(resource_version: str | None, annotation: str | None) -> dict[str, Any]:
    """The merge patch that suspends (with our annotation) or resumes (removing it) an object,
    preconditioned on ``resource_version`` so a concurrent change is a 409, not lost."""
    return {
        "metadata": {
            "resourceVersion": resource_version,
            "annotations": {SUSPEND_ANNOTATION: annotation},
        },
        "spec": {"suspend": annotation is not None},
    }


class _ExitWaiter:
    """Waits for one target's process to exit without signalling it: a pidfd on Linux (pins
    the pid, polls readable on exit), else re-sampling (gone, or another start time)."""

    def __init__(self, target: Target, sampler: Sampler) -> None:
        self._target = target
        self._sampler = sampler
        self._fd: int | None = None
        if sys.platform == "linux":
            try:
                self._fd = os.pidfd_open(target.pid)
            except OSError:
                self._fd = None

    def is_target(self) -> bool:
        """Whether the pid (pinned by the pidfd where there is one) is still the target."""
        try:
            rec = self._sampler.process(self._target.pid)
        except (Error, OSError):
            return False
        return rec.start_time == self._target.start_time

    def wait(self, timeout: float) -> bool:
        if self._fd is not None:
            poller = select.poll()
            poller.register(self._fd, select.POLLIN)
            return bool(poller.poll(max(0, round(timeout * 1000))))
        deadline = time.monotonic() + timeout
        while True:
            if not self.is_target():
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(0.05, left))

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class Suspender:
    """The suspend path (watchdog thread) and the resumes it leaves to the worker."""

    def __init__(
        self,
        options: KubeOptions,
        store: ObjectStore,
        failures: Failures,
        post: Callable[[EventItem], None],
        *,
        clock: Callable[[], float],
        wall: Callable[[], float],
    ) -> None:
        self._options = options
        self._store = store
        self._failures = failures
        self._post = post
        self._clock = clock
        self._wall = wall
        self._lock = threading.Lock()
        self._resume_wanted: dict[KubeRef, None] = {}

    # --- suspend (watchdog thread) -------------------------------------------------------------
    def stop(
        self, target: Target, sampler: Sampler, ref: KubeRef, api: Api, gate: Gate | None
    ) -> StopRecord:
        """Suspend ``target``'s object and wait for the owner to stop it (see the module
        docstring); the caller has checked that the API is reachable and ``ref`` exists."""
        t0 = self._clock()
        waiter = _ExitWaiter(target, sampler)
        try:
            if not waiter.is_target():  # gone already: stop() says so without signalling
                return stop(target, sampler=sampler, gate=gate)
            footprint = _footprint(target, sampler)
            try:  # the object as it is now: its protection may have changed since the plan
                info = self._store.remember(ref, api.get(ref))
            except CallFailed as exc:
                self._failures.count(WriteKind.SUSPEND, exc, ref)
                return self.signal_path(target, sampler, gate, exc.message)
            managed = admission_managed(info, self._options.admission_labels)
            if managed is not None:  # Kueue owns spec.suspend: never fight it
                return self.signal_path(target, sampler, gate, managed)
            refusal = gate(target) if gate is not None else _own_check(target, info)
            if refusal is not None:
                return StopRecord(
                    target.key, target.pid, target.start_time, StopResult.DENIED, (),
                    self._clock() - t0, f"safety gate: {refusal.reason}: {refusal.detail}",
                )  # fmt: skip
            failure = self._suspend(api, ref, footprint, info)
            if failure is not None:
                return self.signal_path(target, sampler, gate, failure)
            grace = (
                self._options.suspend_grace
                if self._options.suspend_grace is not None
                else target.stop.grace_seconds
            )
            self._post(
                EventItem(
                    ref, EventReason.SUSPENDED, "Warning",
                    f"spec.suspend set by metalmem on {self._options.node_name} to stop "
                    f"{target.key} (pid {target.pid}, footprint {human(footprint)}) under "
                    "CRITICAL memory pressure", "", self._wall(),
                )
            )  # fmt: skip
            if waiter.wait(grace):
                message = f"suspended {ref.namespace}/{ref.name}; the owner stopped the process"
                log.info("event=kube_suspend_done key=%s pid=%d ref=%s/%s duration=%.3f",
                         target.key, target.pid, ref.namespace, ref.name,
                         self._clock() - t0)  # fmt: skip
                return StopRecord(
                    target.key, target.pid, target.start_time, StopResult.TERMINATED,
                    ("suspend",), self._clock() - t0, message,
                )  # fmt: skip
        finally:
            waiter.close()
        log.warning("event=kube_suspend_timeout key=%s pid=%d grace=%.1f fallback=signal",
                    target.key, target.pid, grace)  # fmt: skip
        rec = stop(target, sampler=sampler, gate=gate)
        result = rec.result
        if result is StopResult.ALREADY_GONE:
            result = StopResult.TERMINATED  # the owner stopped it, just after the grace
        elif not result.is_gone:
            self.want_resume(ref)  # still running: undo the suspend once memory allows
        return StopRecord(
            target.key, target.pid, target.start_time, result, ("suspend", *rec.steps),
            self._clock() - t0,
            f"suspended {ref.namespace}/{ref.name}; the process did not exit within "
            f"{grace:g} s, so the signal path ran: {rec.message}",
        )  # fmt: skip

    def signal_path(
        self, target: Target, sampler: Sampler, gate: Gate | None, why: str
    ) -> StopRecord:
        """Stop by signal (through the gate), recording why the object was not suspended."""
        log.warning("event=kube_suspend_skipped key=%s reason=%r fallback=signal", target.key, why)
        rec = stop(target, sampler=sampler, gate=gate)
        return dataclasses.replace(rec, message=f"not suspended ({why}); {rec.message}")

    def _suspend(
        self, api: Api, ref: KubeRef, footprint: int | None, info: ObjectInfo | None
    ) -> str | None:
        """Set spec.suspend with our annotation; None on success, else why not."""
        annotation = json.dumps(
            {
                "time": rfc3339(self._wall()),
                "level": Level.CRITICAL.name,  # the planner acts only at CRITICAL
                "footprint": footprint,
                "node": self._options.node_name,
            },
            sort_keys=True,
        )
        for _ in range(_CONFLICT_RETRIES):
            try:
                if info is None:
                    info = self._store.remember(ref, api.get(ref))
                if info.suspended and not info.has_annotation:
                    return "spec.suspend was already set by someone else"
                obj = api.merge_patch(ref, _suspend_patch(info.resource_version, annotation))
            except CallFailed as exc:
                self._failures.count(WriteKind.SUSPEND, exc, ref)
                if exc.result is WriteResult.CONFLICT:
                    info = None
                    continue
                return exc.message
            self._store.remember(ref, obj)
            self._failures.stats.kube_write(WriteKind.SUSPEND, WriteResult.SUCCESS)
            log.info("event=kube_suspended ref=%s/%s footprint=%s", ref.namespace, ref.name,
                     footprint)  # fmt: skip
            return None
        return "the object kept changing (409 conflicts)"

    # --- resume (worker) -----------------------------------------------------------------------
    def want_resume(self, ref: KubeRef) -> None:
        with self._lock:
            self._resume_wanted[ref] = None

    @property
    def resume_pending(self) -> bool:
        return bool(self._resume_wanted)

    def resume_one(
        self, api: Api, level: Level | None, system: SystemMemory | None, warning: float
    ) -> bool:
        """Resume one object whose block cleared, if ours and its footprint fits now."""
        with self._lock:
            wanted = [r for r in self._resume_wanted if not self._store.is_missing(r)]
        for ref in wanted:
            info = self._store.get(ref)
            footprint = (info.annotation or {}).get("footprint") if info is not None else None
            if level != Level.NORMAL or not fits_headroom(
                footprint if isinstance(footprint, int) else None, system, warning
            ):
                continue
            self._resume(api, ref, system, warning)
            return True
        return False

    def _resume(self, api: Api, ref: KubeRef, system: SystemMemory | None, warning: float) -> None:
        done = True
        for _ in range(_CONFLICT_RETRIES):
            info = self._store.fetch(api, self._failures, ref)
            if info is None:
                break
            if not info.has_annotation or not info.suspended:
                why = "not_suspended_by_metalmem" if info.suspended else "not_suspended"
                log.info("event=kube_resume_skipped ref=%s/%s reason=%s", ref.namespace, ref.name,
                         why)  # fmt: skip
                break
            node = (info.annotation or {}).get("node")
            if node not in (None, self._options.node_name):
                log.info("event=kube_resume_skipped ref=%s/%s reason=suspended_by_node node=%s",
                         ref.namespace, ref.name, node)  # fmt: skip
                break
            footprint = (info.annotation or {}).get("footprint")
            if not fits_headroom(footprint if isinstance(footprint, int) else None, system,
                                 warning):  # fmt: skip
                done = False  # the annotation says it is bigger than the cache knew: wait
                break
            try:
                obj = api.merge_patch(ref, _suspend_patch(info.resource_version, None))
            except CallFailed as exc:
                if exc.transient:
                    self._failures.stats.kube_write(WriteKind.RESUME, exc.result)
                    raise
                self._failures.count(WriteKind.RESUME, exc, ref, verb="patch")
                if exc.result is WriteResult.CONFLICT:
                    continue
                break
            self._store.remember(ref, obj)
            self._failures.stats.kube_write(WriteKind.RESUME, WriteResult.SUCCESS)
            log.info("event=kube_resumed ref=%s/%s footprint=%s", ref.namespace, ref.name,
                     footprint)  # fmt: skip
            self._post(
                EventItem(
                    ref, EventReason.RESUMED, "Normal",
                    f"spec.suspend cleared by metalmem on {self._options.node_name}: footprint "
                    f"{human(footprint if isinstance(footprint, int) else None)} fits the "
                    "headroom above the WARNING threshold", "", self._wall(),
                )
            )  # fmt: skip
            break
        if done:
            with self._lock:
                self._resume_wanted.pop(ref, None)


def _footprint(target: Target, sampler: Sampler) -> int | None:
    try:
        return sampler.process(target.pid).footprint
    except (Error, OSError):
        return None


def _own_check(target: Target, info: ObjectInfo) -> Refusal | None:
    """Without a safety gate (a reporter used without a watchdog): the fresh object's own
    protection and priority."""
    facts = SpecFields(info.priority, info.protected).facts(target, Metadata.READ)
    if facts.protected:
        return Refusal(SkipReason.PROTECTED, "its object sets evictionProtection")
    if facts.priority != target.priority:
        return Refusal(SkipReason.PRIORITY_CHANGED, f"its object says {facts.priority}")
    return None
