"""The reporter: composes the API, the object store, the condition, events and suspend.

It only *reads* the watchdog (listeners, STYLE rule 14) and gives it two hooks:
:meth:`KubeReporter.overlay` (priority and protection from the object's spec) and
:meth:`KubeReporter.stopper` (evict through the owner). Every API call of the reporting path
runs on one worker thread; the listeners only record what changed. Transient failures
(connection refused, timeouts, 5xx, 429) back off exponentially up to a cap.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ..evictor import PUBLISH_TIMEOUT
from ..gate import KubeFacts, Refusal
from ..level import Level
from ..pressure import Assessment, PressurePolicy
from ..process import StopRecord, StopResult, stop
from ..sampler import Sampler, SystemMemory
from ..state import EvictionRecord, Listeners, SkipRecord, State
from ..targets import KubeRef, Metadata, Target
from .api import Api, Failures, KubeStats, NoStats
from .condition import ConditionSync, describe, human
from .events import EventItem, EventReason, EventSink
from .memory import MemoryAnnotations, notes_of
from .objects import MetadataCache, ObjectStore
from .options import KubeOptions, Resource
from .suspend import Suspender
from .worker import Worker

__all__ = ["KubeReporter"]

log = logging.getLogger("metalmem.kube")

_KEYS_KEPT = 1024  # target keys remembered for their objects (older ones parse as ns/name)


class KubeReporter:
    """Reports the watchdog's view to the objects its targets name, and evicts through them.

    Compose it in the agent::

        reporter = KubeReporter(KubeOptions(...), pressure=policy, stats=agent_stats)
        reporter.start()                      # loads config, starts the worker
        reporter.attach(listeners)            # before the watchdog starts
        dog = Watchdog(..., targets=lambda: reporter.overlay(tracker.targets),
                       listeners=listeners, stopper=reporter.stopper)

    ``pressure`` supplies the WARNING threshold for the resume rule (default policy if
    omitted); ``stats`` counts writes and drops; ``clock`` is monotonic seconds and ``wall``
    Unix seconds (both injectable); ``state_dir`` keeps the objects' last-read priority and
    protection across restarts (:class:`metalmem.kube.objects.MetadataCache`).
    """

    def __init__(
        self,
        options: KubeOptions,
        *,
        pressure: PressurePolicy | None = None,
        stats: KubeStats | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        state_dir: str | None = None,
    ) -> None:
        self.options = options
        # The watchdog's safety gate, asked right before a suspend (set by whoever composes
        # the two; without one, the stopper checks the fresh object's protection itself).
        self.gate: Callable[[Target], Refusal | None] | None = None
        self.resource = Resource.parse(options.resource)
        self._warning = (pressure or PressurePolicy()).warning_available
        self._stats: KubeStats = stats if stats is not None else NoStats()
        self._clock = clock
        self._wall = wall
        self._meta = MetadataCache(state_dir, clock=clock, wall=wall)
        self._store = ObjectStore(self._meta, str(self.resource))
        self._failures = Failures(self._stats, self.resource, self._store.set_missing)
        self._memory = MemoryAnnotations(self._store, options.node_name, clock)
        self._condition = ConditionSync(self.resource, self._store, wall, self._memory.summary)
        self._store.on_recreated = self._recreated
        self._events = EventSink(options, self.resource, self._store, self._stats)
        self._suspender = Suspender(
            options, self._store, self._failures, self._post, clock=clock, wall=wall
        )
        self._lock = threading.Lock()  # guards assignments only: no I/O or logging under it
        self._refs: dict[KubeRef, None] = {}
        self._key_refs: dict[str, KubeRef] = {}
        self._level: Level | None = None
        self._system: SystemMemory | None = None
        self._assessment: Assessment | None = None
        self._worker = Worker(self._step, options, clock)
        self._api: Api | None = None

    # --- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        """Load the configuration (in-cluster first unless a kubeconfig or context is given,
        then the kubeconfig) and start the worker. Raises :class:`KubeConfigError`."""
        if self._worker.started:
            raise RuntimeError("KubeReporter already started")
        self._api = Api(self.options, self.resource)
        log.info(
            "event=kube_started source=%r server=%s resource=%s namespace=%s node=%s",
            self._api.source, self._api.host, self.resource,
            self.options.namespace or "*", self.options.node_name,
        )  # fmt: skip
        self._worker.start()

    def stop(self, timeout: float = 1.0) -> None:
        """Stop the worker; returns within ``timeout`` (a call in flight is abandoned)."""
        self._worker.stop(timeout)
        if self._api is not None and not self._worker.alive:
            self._api.close()

    def flush(self, timeout: float) -> bool:
        """Wait until nothing is left to write (for a clean shutdown); False on timeout or
        when the worker is not running."""
        return self._worker.flush(timeout)

    def attach(self, listeners: Listeners) -> None:
        """Register the reporter's callbacks (they only record; the worker does the I/O)."""
        listeners.on_sample.append(self._on_sample)
        listeners.on_level_change.append(self._on_level_change)
        listeners.on_evicting.append(self._on_evicting)
        listeners.on_eviction.append(self._on_eviction)
        listeners.on_skip.append(self._on_skip)
        listeners.on_unblock.append(self._on_unblock)

    def set_pressure(self, pressure: PressurePolicy) -> None:
        """Use a reloaded policy's WARNING threshold for the resume rule."""
        self._warning = pressure.warning_available

    @property
    def condition_writers(self) -> frozenset[str]:
        """Other field managers seen writing our condition type (for status and doctor)."""
        return self._condition.other_writers

    @property
    def is_reachable(self) -> bool:
        """False while the API is failing (the worker is backing off)."""
        return self._worker.failures_in_row == 0

    # --- scope ---------------------------------------------------------------------------------
    def _ref_of(self, target: Any) -> KubeRef | None:
        ref = getattr(target, "kube", None)
        if not isinstance(ref, KubeRef):
            return None
        if self.options.namespace is not None and ref.namespace != self.options.namespace:
            return None
        return ref

    def _note(self, refs: Iterable[tuple[str, KubeRef]]) -> None:
        """Remember targets' objects; a new object wakes the worker to read it."""
        new = False
        for key, ref in refs:
            if self._key_refs.get(key) == ref and ref in self._refs:
                continue
            with self._lock:
                self._key_refs[key] = ref
                if len(self._key_refs) > _KEYS_KEPT:  # keys with #pid come and go with pids
                    del self._key_refs[next(iter(self._key_refs))]
                if ref not in self._refs:
                    self._refs[ref] = None
                    new = True
        if new:
            self._worker.refresh_wanted = True
            self._worker.wake.set()

    def _ref_for_key(self, key: str) -> KubeRef | None:
        ref = self._key_refs.get(key)
        if ref is None:  # e.g. a respawn block from before a restart: keys are ns/name[#pid]
            ns, sep, name = key.partition("/")
            name = name.split("#", 1)[0]
            if sep and ns and name:
                ref = KubeRef(ns, name)
                if self.options.namespace is not None and ns != self.options.namespace:
                    return None
        return ref

    # --- target metadata -------------------------------------------------------------------------
    def overlay(self, targets: Sequence[Target]) -> tuple[Target, ...]:
        """The targets with priority and protection from their objects' spec, where the spec
        sets them (``spec.priority``, ``spec.evictionProtection``), and ``metadata`` saying
        where they come from. A target whose object was not read yet is
        :attr:`Metadata.PENDING` (never stopped, issue 13); one whose object does not exist
        keeps its local settings. Cheap: reads a cached snapshot (refreshed by the worker every
        ``refresh`` seconds), never calls the API."""
        self._note((t.key, r) for t in targets if (r := self._ref_of(t)) is not None)
        out = []
        for t in targets:
            facts = self.metadata(t)
            if facts is None:
                ref = self._ref_of(t)
                first_read = (
                    self.is_reachable and ref is not None and not self._store.was_attempted(ref)
                )
                t = dataclasses.replace(
                    t, metadata=Metadata.PENDING if first_read else Metadata.UNKNOWN
                )
            elif facts.source is not Metadata.LOCAL:
                t = dataclasses.replace(
                    t, priority=facts.priority, protected=facts.protected, metadata=facts.source
                )
            out.append(t)
        return tuple(out)

    def metadata(self, target: Target) -> KubeFacts | None:
        """What ``target``'s object says now (see :class:`metalmem.gate.KubeFacts`): read
        within twice the refresh period, or as last read while the API is unreachable;
        ``None`` when nothing is known. Local settings hold for a target without an object in
        scope and for an object that does not exist."""
        ref = self._ref_of(target)
        if ref is None or self._store.is_missing(ref):
            return KubeFacts(target.priority, target.protected, Metadata.LOCAL)
        return self._meta.facts(
            ref, target, max_age=2 * self.options.refresh, reachable=self.is_reachable
        )

    # --- listeners (notifier thread: record, never call the API) --------------------------------
    def _on_sample(self, state: State) -> None:
        self._note((t.key, r) for t in state.targets if (r := self._ref_of(t)) is not None)
        self._note_memory(state)
        assessment = state.assessment
        fresh: list[KubeRef] = []
        with self._lock:
            self._system, self._assessment = state.system, assessment
            if assessment is not None:
                level = self._level if self._level is not None else assessment.level
                self._level = level
                fresh = [r for r in self._refs if not self._condition.has_desired(r)]
        if fresh:
            message = describe(level, state.system, assessment)
            for ref in fresh:
                self._condition.want(ref, level, message)
        if fresh or self._suspender.resume_pending:
            self._worker.wake.set()

    def _note_memory(self, state: State) -> None:
        """Each object's processes' memory from this sample (annotation, condition message)."""
        for ref, note in notes_of(state, self._ref_of, self._wall).items():
            self._memory.note(ref, note)

    def _recreated(self, ref: KubeRef) -> None:
        self._condition.forget(ref)
        self._memory.forget(ref)

    def _on_level_change(self, old: Level, new: Level, assessment: Assessment) -> None:
        now = self._wall()
        with self._lock:
            self._level = new
            self._assessment = assessment
            message = describe(new, self._system, assessment)
            refs = list(self._refs)
        for ref in refs:
            self._condition.want(ref, new, message)
        kind = "Normal" if new == Level.NORMAL else "Warning"
        note = f"memory pressure {old.name} -> {new.name}: {message}"
        for ref in refs:
            self._post(EventItem(ref, EventReason.LEVEL_CHANGED, kind, note,
                                 f"{old.name}->{new.name}", now))  # fmt: skip

    def _on_evicting(self, record: EvictionRecord) -> None:
        """A stop is starting: say so on its object before the first signal (issue 14)."""
        ref = self._ref_for_key(record.key)
        if ref is not None:
            note = (
                f"evicting {record.key} (pid {record.pid}, priority {record.priority}, "
                f"footprint {human(record.footprint)}) on signal {record.reason}"
            )
            self._post(EventItem(ref, EventReason.EVICTING, "Warning", note, "", self._wall()))

    def _on_eviction(self, record: EvictionRecord) -> None:
        if record.result == "dry-run":
            return
        ref = self._ref_for_key(record.key)
        if ref is None:
            return
        now = self._wall()
        try:
            result = StopResult(record.result)
        except ValueError:
            result = StopResult.FAILED
        note = (
            f"evicted {record.key} (pid {record.pid}, priority {record.priority}) on signal "
            f"{record.reason}: result {record.result}, footprint {human(record.footprint)}, "
            f"reclaimed {human(record.reclaimed)}; {record.message}"
        )
        with self._lock:
            level = self._level or Level.CRITICAL
            system, assessment = self._system, self._assessment
        if result.is_success and level != Level.NORMAL:  # at NORMAL it is over already
            message = (
                f"evicted pid {record.pid}: result {record.result}, footprint "
                f"{human(record.footprint)}, reclaimed {human(record.reclaimed)}; "
                + describe(level, system, assessment)
            )
            self._condition.want(ref, level, message, evicted=True)
        self._post(EventItem(ref, EventReason.EVICTED, "Warning", note, record.result, now))
        if result.is_success or result is StopResult.FAILED:
            self._post(
                EventItem(
                    ref, EventReason.RESPAWN_BLOCKED, "Warning",
                    f"{record.key} must not be respawned until NORMAL has held for the "
                    "transition period", "", now,
                )
            )  # fmt: skip

    def _on_skip(self, record: SkipRecord) -> None:
        now = self._wall()
        note = f"eviction wanted but skipped: {record.reason.value}: {record.explanation}"
        with self._lock:
            refs = list(self._refs)
        for ref in refs:
            self._post(
                EventItem(ref, EventReason.EVICTION_SKIPPED, "Warning", note,
                          record.reason.value, now)
            )  # fmt: skip

    def _on_unblock(self, keys: tuple[str, ...]) -> None:
        now = self._wall()
        for key in keys:
            ref = self._ref_for_key(key)
            if ref is None:
                continue
            self._suspender.want_resume(ref)
            self._post(
                EventItem(ref, EventReason.RESPAWN_UNBLOCKED, "Normal",
                          f"{key} may be respawned: NORMAL has held for the transition period",
                          "", now)
            )  # fmt: skip

    def _post(self, item: EventItem) -> None:
        self._events.post(item)
        self._worker.wake.set()

    # --- the suspend path (watchdog thread) -------------------------------------------------------
    def stopper(self, target: Target, sampler: Sampler) -> StopRecord:
        """Stop a victim through its owner: merge-patch ``spec.suspend: true`` with the
        ``metalmem.io/suspended`` annotation, then wait up to the grace for the process to
        exit; if it does not, run :func:`metalmem.process.stop` (recorded in the message).

        Targets without an object, protected ones, objects suspended by someone else, and any
        failure to patch (API unreachable, 403, 404) take the signal path at once. Pass it as
        ``Watchdog(stopper=...)``.
        """
        ref = self._ref_of(target)
        api = self._api
        if self.is_reachable:
            self.flush(PUBLISH_TIMEOUT)  # the condition and "Evicting" before any signal
        if ref is None or api is None or target.protected or self._store.is_missing(ref):
            return stop(target, sampler=sampler, gate=self.gate)
        if not self.is_reachable:
            return self._suspender.signal_path(
                target, sampler, self.gate, "the API server is unreachable"
            )
        return self._suspender.stop(target, sampler, ref, api, self.gate)

    # --- worker ----------------------------------------------------------------------------------
    def _step(self) -> bool:
        """One unit of work; True if there was any. Transient failures raise CallFailed."""
        api = self._api
        assert api is not None
        if self._worker.refresh_due():
            with self._lock:
                refs = list(self._refs)
            read = self._store.refresh(api, self._failures, refs)
            self._condition.heal(read, self._failures)
            return True
        if self._condition.sync(api, self._failures):
            return True
        with self._lock:
            level, system = self._level, self._system
        if self._suspender.resume_one(api, level, system, self._warning):
            return True
        return self._memory.sync(api, self._failures) or self._events.send_one(api, self._failures)
